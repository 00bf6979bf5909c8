"""Validation of Python arguments: one place decides what an integer or a number is.

Every helper raises InvalidInputError naming the argument (as `names`, so that a CLI can show
its flag instead). bool is refused everywhere: `top_k=True` is a mistake, not a 1.
"""
import numbers
from typing import Any

import numpy as np

from .errors import InvalidInputError

# image indices and seeds are stored as int64; more images than this in one request or run
# would spend gigabytes on bookkeeping before the first image
MAX_INDEX = 2**63 - 1
MAX_IMAGES = 10_000_000


def integer(value: Any, name: str, minimum: int = 0, maximum: int = MAX_INDEX) -> int:
    """`value` as an int in [minimum, maximum]; floats, strings and bools are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not minimum <= value <= maximum:
        bounds = f"in [{minimum}, {maximum}]" if maximum < MAX_INDEX else f">= {minimum}"
        raise InvalidInputError(f"{name} must be an integer {bounds}, got {value!r}", [name])
    return int(value)


def number(value: Any, name: str) -> float:
    """`value` as a finite float; strings, bools and non-numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value):  # type: ignore[call-overload]  # numbers.Real is not in numpy's stubs
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}", [name])
    return float(value)
