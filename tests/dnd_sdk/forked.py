"""Run a call in a child made by fork() and bring its result (or its error, as text) back to the test."""
import multiprocessing
from collections.abc import Callable
from typing import Any


def _put_outcome(call: Callable[[], Any], queue: Any) -> None:
    try:
        queue.put(call())
    except BaseException as e:  # the parent asserts on it
        queue.put(f"{type(e).__name__}: {e}")


def in_forked_child(call: Callable[[], Any], timeout: float = 30) -> Any:
    """What `call()` returns in a forked child; a string naming the error if it raised. The child is killed
    once it has answered, or when `timeout` passes (queue.Empty then)."""
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    child = fork.Process(target=_put_outcome, args=(call, queue))
    child.start()
    try:
        return queue.get(timeout=timeout)
    finally:
        child.kill()
        child.join()
