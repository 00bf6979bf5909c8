"""Class names: each must name exactly one class, and `--labels a,b` splits on commas."""
from collections.abc import Iterable
from typing import Optional


def label_problem(labels: Iterable) -> Optional[str]:
    """What is wrong with a model's class names, or None: a repeated name would silently mean its last id,
    a name with a comma could never be asked for on the command line."""
    seen, repeated = set(), []
    for name in map(str, labels):
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    with_comma = [str(n) for n in labels if "," in str(n)]
    if repeated:
        return f"class names must be unique, {repeated[:5]} repeat"
    if with_comma:
        return f"class names must not contain commas, {with_comma[:5]} do"
    if any(not str(n).strip() for n in labels):
        return "class names must not be empty"
    return None
