"""Run configs: nested dataclasses read from YAML or JSON, with `section.key=value` overrides.

    config = load_config(TransformerRunConfig, "configs/transformer-words.yaml", ["train.steps=100"])
    save_config(config, "runs/x/config.yaml")    # the fully resolved config, next to the checkpoint

Override values are parsed as YAML, so `train.lr=3e-4`, `data.words=[cat,dog]` and
`train.ema_decay=null` all work. Unknown keys are errors, never silently ignored.
"""
import dataclasses
import json
import math
import typing
from pathlib import Path

import yaml

from dnd_sdk.arguments import shown
from dnd_sdk.errors import InvalidInputError


def _dataclass_type(tp):
    """The dataclass in `tp` (also inside Optional[...]), else None."""
    candidates = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    return next((c for c in candidates if isinstance(c, type) and dataclasses.is_dataclass(c)), None)


def _coerce(tp, value, name: str):
    """Numbers written like 3e-4 are strings to YAML 1.1; turn them into the field's type, or say what is wrong."""
    args = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    if value is None or not any(t in (int, float) for t in args):
        return value
    want = float if float in args else int
    try:  # a bool is no number here: `steps: true` is a mistake, not 1
        number = want(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except (ValueError, OverflowError):  # not a number, past int()'s digit limit, or int() of inf
        number = None
    if number is None or (want is int and isinstance(value, float) and value != int(value)):
        raise InvalidInputError(f"config entry {name} must be {'a number' if want is float else 'an integer'}, "
                                f"got {shown(value)}")
    return number


def type_problem(cls, values: dict, where: str = ""):
    """What is wrong with the first value in `values` whose type does not fit its field of dataclass `cls`, else
    None: a stored or written config reaches code that would fail deep inside torch (or run on a silently
    truncated value) if a string stood where an int belongs. bool is not an int, an int is a float, numbers
    are finite, and a `list[int]` field holds ints."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values and not _dataclass_type(hints[f.name]):
            problem = value_problem(hints[f.name], values[f.name], where + f.name)
            if problem:
                return problem
    return None


def value_problem(tp, value, name: str):
    """`name = value is not <what tp asks for>` when `value` does not fit type `tp` (as type_problem), else None."""
    return None if _fits(tp, value) else f"{name} = {value!r:.80} is not {_kind(tp)}"


def stored_config(cls, values, name: str, error=InvalidInputError, prefix: str = ""):
    """Dataclass `cls` from the mapping `values` read from a file (a checkpoint's model_config, say), or `error`
    (its message after `prefix`) naming what is wrong: not a mapping, a field of the wrong type, or values
    that make no valid config."""
    if not isinstance(values, dict):
        raise error(f"{prefix}{name} must be a mapping of settings, got {type(values).__name__}")
    problem = type_problem(cls, values, f"{name}.")
    if problem:
        raise error(f"{prefix}{problem}")
    try:
        return cls(**values)
    except (TypeError, ValueError, AssertionError, ZeroDivisionError) as e:
        raise error(f"{prefix}invalid config in {name}: {e}") from None


def _fits(tp, value) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return any(_fits(t, value) for t in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if tp in (list, dict, str):
        return isinstance(value, tp)
    if origin is list:
        return isinstance(value, list) and all(_fits(args[0], v) for v in value)
    return True  # a type no config value needs checked here


def _finite(number) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int past the float range
        return False


def _kind(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join(_kind(t) for t in args)
    if origin is list:
        return f"a list of {_kind(args[0]).split(' ', 1)[1]}s"
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a finite number", str: "a string",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a nested dict, recursing into dataclass-typed fields."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"config section {where or '(top)'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidInputError(f"unknown config key(s) {[where + k for k in unknown]}; "
                                f"valid keys in {where or 'the top level'}: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(hints[key])
        if sub is not None and value is not None:
            kwargs[key] = from_dict(sub, value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(hints[key], value, where + key)
    problem = type_problem(cls, kwargs, where)
    if problem:
        raise InvalidInputError(f"config entry {problem}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"invalid config in {where or 'the top level'}: {e}") from None


def read_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"config file {path} does not exist; see configs/ for examples")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # ValueError: also an int past Python's digit limit
        raise InvalidInputError(
            f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    return data or {}


def apply_overrides(data: dict, overrides) -> dict:
    """Apply `a.b.c=value` strings to a nested dict (in place) and return it."""
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"override {item!r} must look like section.key=value, e.g. train.steps=100")
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError):  # ValueError: an int past Python's digit limit; _coerce judges it
            value = raw
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InvalidInputError(f"override {item!r}: {p} is not a section")
        node[leaf] = value
    return data


def load_config(cls, path=None, overrides=()):
    data = read_config_file(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides))


def save_config(config, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
