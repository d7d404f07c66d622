"""Upload quotas: how many bytes one visitor, and all visitors together, may upload per hour.

An ASGI middleware in front of Gradio's upload route (`/gradio_api/upload`): a request whose
bytes would take its sender (`sender`) past `config.UPLOAD_QUOTA_MB`, or everybody past
`config.UPLOAD_TOTAL_MB`, within the last `config.UPLOAD_WINDOW_S` seconds is answered 429 with
a message saying when to try again — before its body is read. Bodies without a length are
counted as they stream and cut off at the quota.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from app import config

UPLOAD_PATH_SUFFIX = "/gradio_api/upload"


class Ledger:
    """Bytes per sender and in all, over a sliding window."""

    def __init__(self, per_sender_bytes: float, total_bytes: float, window_s: float):
        self.per_sender, self.total, self.window = per_sender_bytes, total_bytes, window_s
        self.events: deque[tuple[float, str, int]] = deque()
        self.by_sender: dict[str, int] = {}
        self.sum = 0
        self.lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - self.window:
            _, who, n = self.events.popleft()
            self.sum -= n
            left = self.by_sender[who] - n
            if left > 0:
                self.by_sender[who] = left
            else:
                del self.by_sender[who]

    def refusal(self, who: str, n: int, now: float | None = None) -> str | None:
        """Record `n` bytes for `who`, or say why not (nothing recorded then)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(now)
            mine = self.by_sender.get(who, 0)
            if mine + n > self.per_sender:
                return (f"Upload quota reached: {mine / 1e6:.0f} MB uploaded from here in the last "
                        f"{self.window / 60:.0f} minutes (limit {self.per_sender / 1e6:.0f} MB on this public demo). "
                        f"Try again in {self._wait(now, who) / 60:.0f} minutes.")
            if self.sum + n > self.total:
                return (f"This demo has received its upload allowance for the last {self.window / 60:.0f} minutes "
                        f"({self.total / 1e6:.0f} MB from all visitors). Try again in "
                        f"{self._wait(now, None) / 60:.0f} minutes.")
            self.events.append((now, who, n))
            self.by_sender[who] = mine + n
            self.sum += n
            return None

    def _wait(self, now: float, who: str | None) -> float:
        first = next((t for t, w, _ in self.events if who is None or w == who), now)
        return max(60.0, first + self.window - now)


LEDGER = Ledger(config.UPLOAD_QUOTA_MB * 1e6, config.UPLOAD_TOTAL_MB * 1e6, config.UPLOAD_WINDOW_S)


def sender(scope) -> str:
    """Who uploads: the session_hash header where the client sends one, else the last address of
    X-Forwarded-For (added by a Space's proxy), else the peer address. A forged header only moves
    a sender to another per-sender bucket: the total quota still counts every byte."""
    headers = dict(scope.get("headers") or [])
    session = headers.get(b"session_hash", b"").decode("latin-1").strip()[:64]
    if session:
        return "session:" + session
    hops = [h.strip() for h in headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",") if h.strip()]
    if hops:  # the last entry: what the proxy in front of the app saw (earlier ones the client wrote)
        return "client:" + hops[-1][:64]
    client = scope.get("client") or ("?", 0)
    return "client:" + str(client[0])


class UploadQuota:
    """ASGI middleware: `app_kwargs={"middleware": [Middleware(UploadQuota)]}` at launch."""

    def __init__(self, app, ledger: Ledger | None = None):
        self.app, self.ledger = app, ledger or LEDGER

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith(UPLOAD_PATH_SUFFIX):
            return await self.app(scope, receive, send)
        who = sender(scope)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit():
            why = self.ledger.refusal(who, int(length))
            if why:
                return await _refuse(send, why)
            return await self.app(scope, receive, send)

        async def counted():  # no length given: count the body as it comes, refuse past the quota
            message = await receive()
            n = len(message.get("body", b""))
            if n and self.ledger.refusal(who, n):
                raise ConnectionAbortedError("upload quota reached")
            return message

        try:
            return await self.app(scope, counted, send)
        except ConnectionAbortedError:
            return await _refuse(send, self.ledger.refusal(who, 1) or "Upload quota reached.")


async def _refuse(send, why: str) -> None:
    body = why.encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
