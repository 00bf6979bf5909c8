"""Wait for a Generator's scheduler to drop what nobody waits for any more."""
import time


def scheduler_idle(gen, seconds: float = 2.0) -> bool:
    """Whether no request waits and no image is in flight within `seconds` (a dropped request goes at the next step)."""
    deadline = time.monotonic() + seconds
    while gen.scheduler.queue_depth or gen.scheduler.images_in_flight:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
