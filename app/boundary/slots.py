"""Who runs heavy work next: `config.HEAVY_SLOTS` slots shared fairly between visitors.

Gradio's queue is first-come-first-served, so 30 requests from one visitor's 30 sessions put the
next visitor 30 requests back. Here heavy handlers (compare, benchmark, training, Inspect) are
admitted by Gradio up to `config.HEAVY_ADMIT` at once and then wait for one of the slots in
`SLOTS`, which goes to the waiting *visitor* with the fewest slots in use and, among those, the
one served longest ago: a lone visitor waits for at most one running request to end, however
many requests others have queued.

* A visitor is the address the request came from (`visitor`): the last X-Forwarded-For entry
  (added by the proxy a Space runs behind), else the peer address.
* `one_per_session`: a browser session has at most one heavy request in flight.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager

from qatie.errors import QatieError

from app import config


class BusyError(QatieError):
    """This browser session already has a heavy request running (message shown as is)."""


def visitor(request) -> str:
    """Who is asking: the last X-Forwarded-For address (the proxy's view of the client; earlier
    entries are whatever the client wrote), else the peer address."""
    headers = getattr(request, "headers", None) or {}
    try:
        forwarded = headers.get("x-forwarded-for", "")
    except Exception:  # noqa: BLE001 — an unusual headers object: fall back to the peer
        forwarded = ""
    hops = [h.strip() for h in str(forwarded).split(",") if h.strip()]
    if hops:
        return hops[-1][:64]
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "local")


# --------------------------------------------------------------------------------------------
# One heavy request per browser session
# --------------------------------------------------------------------------------------------

_busy: dict[str, str] = {}
_busy_lock = threading.Lock()


@contextmanager
def one_per_session(request, what: str):
    """Run the block only if `request`'s browser session has no other heavy request in flight
    (BusyError otherwise). Requests without a session (direct Python calls) are not gated."""
    key = getattr(request, "session_hash", None)
    if not key:
        yield
        return
    with _busy_lock:
        running = _busy.get(key)
        if running is not None:
            raise BusyError(f"{running} from this browser session is still running; it must finish (or be "
                            f"cancelled) before {what[:1].lower() + what[1:]} can start. One request at a time per "
                            "visitor keeps this public demo fair.")
        _busy[key] = what
    try:
        yield
    finally:
        with _busy_lock:
            _busy.pop(key, None)


# --------------------------------------------------------------------------------------------
# Fair slots
# --------------------------------------------------------------------------------------------

class Ticket:
    """A place in line for one slot; `wait(timeout)` → True once granted; `release()` always."""

    def __init__(self, slots: "FairSlots", who: str, number: int):
        self.slots, self.who, self.number = slots, who, number
        self.granted = False
        self.done = False

    def wait(self, timeout: float | None = None) -> bool:
        with self.slots.cond:
            if not self.granted:
                self.slots.cond.wait_for(lambda: self.granted, timeout)
            return self.granted

    def ahead(self) -> int:
        """Requests that would be served before this one if nothing else arrived."""
        return self.slots.position(self)

    def release(self) -> None:
        self.slots.release(self)


class FairSlots:
    """`slots` slots; among waiting tickets the next goes to the visitor with the fewest slots in
    use, then the one served longest ago, then the oldest ticket."""

    def __init__(self, slots: int):
        self.slots = slots
        self.cond = threading.Condition()
        self.waiting_list: list[Ticket] = []
        self.running: dict[str, int] = {}
        self.last_served: dict[str, float] = {}
        self.counter = itertools.count()

    def ticket(self, who: str) -> Ticket:
        with self.cond:
            t = Ticket(self, who, next(self.counter))
            self.waiting_list.append(t)
            self._grant()
            return t

    def _order(self, t: Ticket):
        return (self.running.get(t.who, 0), self.last_served.get(t.who, -1.0), t.number)

    def _grant(self) -> None:
        while self.waiting_list and sum(self.running.values()) < self.slots:
            t = min(self.waiting_list, key=self._order)
            self.waiting_list.remove(t)
            t.granted = True
            self.running[t.who] = self.running.get(t.who, 0) + 1
            self.last_served[t.who] = time.monotonic()
        if len(self.last_served) > 4096:  # forget long-gone visitors
            for who in sorted(self.last_served, key=self.last_served.get)[:2048]:
                if who not in self.running:
                    del self.last_served[who]
        self.cond.notify_all()

    def position(self, ticket: Ticket) -> int:
        with self.cond:
            if ticket.granted or ticket not in self.waiting_list:
                return 0
            return sorted(self.waiting_list, key=self._order).index(ticket)

    def release(self, ticket: Ticket) -> None:
        with self.cond:
            if ticket.done:
                return
            ticket.done = True
            if ticket.granted:
                left = self.running.get(ticket.who, 0) - 1
                if left > 0:
                    self.running[ticket.who] = left
                else:
                    self.running.pop(ticket.who, None)
            elif ticket in self.waiting_list:
                self.waiting_list.remove(ticket)
            self._grant()

    def waiting(self) -> int:
        """Heavy requests waiting for a slot."""
        with self.cond:
            return len(self.waiting_list)

    def busy(self) -> int:
        """Heavy requests running or waiting."""
        with self.cond:
            return sum(self.running.values()) + len(self.waiting_list)


SLOTS = FairSlots(config.HEAVY_SLOTS)


class SlotWaitError(QatieError):
    """No slot came free in time (message shown as is)."""


@contextmanager
def heavy_slot(request, what: str, timeout: float | None = None):
    """Hold one of `SLOTS` for the block (waiting fairly for it; SlotWaitError after `timeout`)."""
    ticket = SLOTS.ticket(visitor(request))
    try:
        if not ticket.wait(config.SLOT_WAIT_S if timeout is None else timeout):
            raise SlotWaitError(wait_message(what))
        yield ticket
    finally:
        ticket.release()


def wait_message(what: str) -> str:
    return (f"{what} waited {config.SLOT_WAIT_S:.0f} s for a free slot: this public demo is very busy. "
            "Try again in a few minutes.")
