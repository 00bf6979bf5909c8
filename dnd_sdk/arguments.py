"""Validation of Python arguments: one place decides what an integer, a number or a timeout is.

`as_int` is the one check of what counts as an integer; every validator that turns user input into
an int goes through it (or through `integer` / `integers`, which raise). Each raising helper raises
InvalidInputError naming the argument (as `names`, so that a CLI can show its flag instead). bool is
refused everywhere: `top_k=True` is a mistake, not a 1. A message quotes the value through `shown`,
cut short: a request cannot make an error message of megabytes, and an int past Python's digit
limit (whose repr raises ValueError) is described by its size.
"""
import math
import numbers
import reprlib
import threading
from typing import Any, Optional

import numpy as np

from .errors import InvalidInputError

# image indices and seeds are stored as int64; more images than this in one request or run
# would spend gigabytes on bookkeeping before the first image
MAX_INDEX = 2**63 - 1
MAX_IMAGES = 10_000_000
# the longest wait threading (and so concurrent.futures) accepts; a longer one raises OverflowError
MAX_SECONDS = threading.TIMEOUT_MAX


class _Shown(reprlib.Repr):
    """repr, cut short; an int too long to print is described by its size instead."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHOWN = _Shown()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 60


def shown(value: Any) -> str:
    """`value` for an error message: its repr, cut short."""
    return _SHOWN.repr(value)


def as_int(value: Any, minimum: float = 0, maximum: float = MAX_INDEX, *, digits: bool = False) -> Optional[int]:
    """`value` as an int in [minimum, maximum], else None. Floats, bools and strings are not integers;
    with digits=True a string of decimal digits (a class id typed on a command line, a header) is
    read as its number, once its length shows it can be in range: int() of a long string is slow,
    and past Python's digit limit it raises."""
    if digits and isinstance(value, str) and value.strip().isdecimal():
        text = value.strip().lstrip("0") or "0"
        if len(text) > len(str(maximum)):
            return None
        value = int(text)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value) if minimum <= value <= maximum else None


def _bounds(minimum: int, maximum: int) -> str:
    return f"in [{minimum}, {maximum}]" if maximum < MAX_INDEX else f">= {minimum}"


def integer(value: Any, name: str, minimum: int = 0, maximum: int = MAX_INDEX, *, digits: bool = False) -> int:
    """`value` as an int in [minimum, maximum] (see `as_int`), or InvalidInputError naming `name`."""
    checked = as_int(value, minimum, maximum, digits=digits)
    if checked is None:
        raise InvalidInputError(f"{name} must be an integer {_bounds(minimum, maximum)}, got {shown(value)}", [name])
    return checked


def integers(values: Any, name: str, minimum: int = 0, maximum: int = MAX_INDEX) -> np.ndarray:
    """A flat list, tuple, range or 1-D integer array of 1..MAX_IMAGES integers in [minimum, maximum],
    as int64 [n]; anything else (nested or ragged lists, floats, strings) is InvalidInputError."""
    arr = values if isinstance(values, np.ndarray) else None
    if isinstance(values, (list, tuple, range)) and 0 < len(values) <= MAX_IMAGES \
            and all(type(v) is int for v in values):  # a bool is no int here
        try:
            arr = np.array(values, np.int64)  # the usual case: checked below at numpy's speed
        except OverflowError:  # past int64, so out of range
            pass
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu" and 0 < len(arr) <= MAX_IMAGES \
            and minimum <= arr.min() and arr.max() <= maximum:
        return arr.astype(np.int64)
    if arr is None and isinstance(values, (list, tuple)) and 0 < len(values) <= MAX_IMAGES:
        checked = [as_int(v, minimum, maximum) for v in values]  # numpy integers among them, say
        if None not in checked:
            return np.array(checked, np.int64)
    raise InvalidInputError(f"{name} must be a flat list of 1 to {MAX_IMAGES:,} integers {_bounds(minimum, maximum)}, "
                            f"got {shown(values)}", [name])


def number(value: Any, name: str) -> float:
    """`value` as a finite float; strings, bools, non-numbers and ints too large for a float are refused."""
    if not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real):
        try:
            x = float(value)
        except OverflowError:  # an int beyond float's range
            x = math.inf
        if math.isfinite(x):
            return x
    raise InvalidInputError(f"{name} must be a finite number, got {shown(value)}", [name])


def seconds(value: Any, name: str = "timeout", *, minimum_open: bool = False) -> Optional[float]:
    """None (no limit) or a number of seconds >= 0 (> 0 with minimum_open) that a wait can take: at
    most MAX_SECONDS, about 292 years, beyond which a threading wait raises OverflowError."""
    if value is None:
        return None
    x = number(value, name)
    if not (0 < x if minimum_open else 0 <= x) or x > MAX_SECONDS:
        low = "> 0" if minimum_open else ">= 0"
        raise InvalidInputError(f"{name} must be a number of seconds {low} and at most {MAX_SECONDS:.0f} (or None "
                                f"for no limit), got {shown(value)}", [name])
    return x
