"""Setting a request's outcome from the threads that run it.

A future's done-callbacks run on the thread that sets its outcome, so each outcome is set from a
short thread of its own: a callback may call the Generator again and wait, which on the scheduler
or decode thread would wait for itself forever.
"""
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any


def resolve(future: Future, compute: Callable[[], Any]) -> None:
    """Set `future`'s result to compute(), or its exception to what compute raised; nothing if it is done."""
    if future.done():  # cancelled meanwhile: its result is not wanted
        return
    try:
        result = compute()
    except Exception as e:
        fail(future, e)
        return
    succeed(future, result)


def succeed(future: Future, result: Any) -> None:
    _settle(future.set_result, result)


def fail(future: Future, error: Exception) -> None:
    _settle(future.set_exception, error)


def _settle(setter: Callable[[Any], Any], outcome: Any) -> None:
    """Set an outcome from a thread of its own, which runs the future's done-callbacks."""
    def settle() -> None:
        try:
            setter(outcome)
        except InvalidStateError:  # cancelled meanwhile
            pass
    threading.Thread(target=settle, name="dnd-result", daemon=True).start()
