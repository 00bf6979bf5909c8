"""What `dnd serve` does about clients that hold connections without finishing requests (slowloris).

uvicorn closes an idle keep-alive connection, but a request head sent a byte at a time never ends
its wait, and each such connection holds a file descriptor: at the usual limit of 1024 open files
the server stops accepting (EMFILE), well-behaved clients included. `GuardedH11Protocol` is
uvicorn's h11 protocol with two limits of `ConnectionGuard`:

- a deadline for the whole request head, counted from the connection's start (or from the previous
  response on a keep-alive connection) and not renewed by each byte that arrives;
- a cap on open connections, kept below the open-files limit: past it, of the connections still
  sending a request (its head or its body) the one that has been at it longest is closed, so that
  new clients still get in and slow ones go first. A request being answered is never closed.

The body's own deadline is the app's (`dnd_sdk.serve`), where it can answer 408.
"""
import asyncio
import os
import resource
from collections import OrderedDict
from typing import Any, Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import DndError

# the listen backlog, which is also how many connections asyncio accepts in one go
BACKLOG = 64
# connections accepted but not yet seen here, or closed here but not yet released: asyncio hands a new
# connection over, and releases a closed one, a loop iteration or two later, accepting meanwhile
IN_TRANSIT = 4 * BACKLOG
# descriptors kept free for what the server opens besides connections (files, pipes, log handlers)
SPARE_FILES = 64
# what an unlimited open-files limit counts as: more connections than one process should hold
UNLIMITED_FILES = 1 << 16


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit, as far as the system lets
    (the soft limit is often 1024 while the hard one is far higher); returns the soft limit."""
    soft, hard = (UNLIMITED_FILES if n == resource.RLIM_INFINITY else n
                  for n in resource.getrlimit(resource.RLIMIT_NOFILE))
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            soft = hard
        except (ValueError, OSError):  # e.g. macOS refuses a soft limit past its own ceiling
            pass
    return soft


def connection_cap(max_connections: int) -> int:
    """`max_connections`, lowered until open connections can never exhaust the open-files limit."""
    soft = raise_open_files_limit()
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 32
    room = soft - in_use - IN_TRANSIT - SPARE_FILES
    if room < 16:
        raise DndError(f"only {soft - in_use} of this process's {soft} open files are free, too few to serve; "
                       f"raise the limit (ulimit -n {in_use + IN_TRANSIT + SPARE_FILES + 256} or more)")
    return min(max_connections, room)


class ConnectionGuard:
    """The head deadline and the connection cap, shared by the connections of one server."""

    def __init__(self, header_timeout: float, max_connections: int):
        self.header_timeout, self.max_connections = header_timeout, max_connections
        # connections still sending a request, the longest at it first -> the head's deadline (None: the body's)
        self.sending: OrderedDict[GuardedH11Protocol, Optional[asyncio.TimerHandle]] = OrderedDict()

    def wait_for_head(self, conn: "GuardedH11Protocol") -> None:
        self.forget(conn)
        self.sending[conn] = conn.loop.call_later(self.header_timeout, self.close, conn)
        if len(conn.connections) > self.max_connections:
            self.close(next(iter(self.sending)))

    def wait_for_body(self, conn: "GuardedH11Protocol") -> None:
        """The head is in: its deadline ends, and the connection keeps its place among those sending."""
        timer = self.sending.get(conn)
        if timer is not None:
            timer.cancel()
            self.sending[conn] = None

    def forget(self, conn: "GuardedH11Protocol") -> None:
        timer = self.sending.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def close(self, conn: "GuardedH11Protocol") -> None:
        self.forget(conn)
        conn.transport.close()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; `guard` bounds the wait for each request head and the connections."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self.guard.wait_for_head(self)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is None or self.cycle.response_complete:
            return  # still waiting for a head
        if self.cycle.more_body:
            self.guard.wait_for_body(self)
        else:  # the whole request is in: it is being answered
            self.guard.forget(self)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():  # before the next request, which may be waiting already
            self.guard.wait_for_head(self)
        super().on_response_complete()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)
