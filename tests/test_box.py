"""The box for untrusted work (`app.boundary.box`), the per-session gate and the upload ledger, without a
server: limits stop a worker and say why, results come back only as plain values and arrays,
and the server process never runs the work."""
import os
import pathlib
import time

import numpy as np
import pytest

from app.boundary import box
from app.boundary import guard
from app.boundary import slots
from app.boundary.upload_quota import Ledger
from qatie.errors import ImageReadError, QatieError


def test_work_runs_in_another_process_and_comes_back_as_arrays():
    with box.Box("The test") as b:
        pid = b.call(os.getpid, seconds=30)
        ones = b.call(np.ones, (3, 4), seconds=30)
        assert b.call(os.getpid, seconds=30) == pid  # one worker per box, kept across calls
    assert pid != os.getpid()
    assert isinstance(ones, np.ndarray) and ones.shape == (3, 4) and ones.sum() == 12


def test_memory_limit_stops_the_worker_with_a_message():
    with pytest.raises(box.BoxError, match="more than the 64 MB of memory"):
        box.run(np.ones, (20_000, 20_000), seconds=30, what="Allocating", memory_mb=64)


def test_deadline_kills_the_worker():
    t0 = time.perf_counter()
    with pytest.raises(guard.DeadlineError, match="Sleeping was stopped after 1 s"):
        box.run(time.sleep, 60, seconds=1, what="Sleeping")
    assert time.perf_counter() - t0 < 10


def test_a_result_naming_any_other_class_is_refused():
    """A worker whose memory an upload corrupted could send a pickle that runs code: only numpy's
    array and scalar constructors may be named."""
    with pytest.raises(box.BoxError, match="stopped unexpectedly"):
        box.run(pathlib.PurePosixPath, "/etc", seconds=30, what="Returning a path")


def test_user_errors_keep_their_class_and_message(tmp_path):
    from app.boundary.uploads import decode_upload

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageReadError, match="not an image file"):
        box.run(decode_upload, str(bad), "bad.png", "photo", None, None, seconds=30, what="Reading")
    with pytest.raises(QatieError, match="failed \\(ZeroDivisionError\\)"):
        box.run(divmod, 1, 0, seconds=30, what="Dividing")


def test_a_killed_worker_is_replaced_on_the_next_call():
    with box.Box("The test", memory_mb=64) as b:
        with pytest.raises(box.BoxError):
            b.call(np.ones, (20_000, 20_000), seconds=30)
        assert b.call(int, "7", seconds=30) == 7


class _Request:
    def __init__(self, session_hash):
        self.session_hash = session_hash


def test_one_heavy_request_per_session():
    a, b = _Request("session-a"), _Request("session-b")
    with slots.one_per_session(a, "A comparison"):
        with pytest.raises(slots.BusyError, match="A comparison from this browser session is still running.*a benchmark"):
            with slots.one_per_session(a, "A benchmark"):
                pass
        with slots.one_per_session(b, "A comparison"):  # another visitor is not held up
            pass
        with slots.one_per_session(None, "A direct call"):  # Python callers have no session
            pass
    with slots.one_per_session(a, "A benchmark"):  # free again once the first has ended
        pass


def test_upload_ledger_per_sender_total_and_window():
    ledger = Ledger(per_sender_bytes=100, total_bytes=250, window_s=3600)
    assert ledger.refusal("a", 60, now=0) is None
    assert "Upload quota reached: 0 MB uploaded from here" in ledger.refusal("a", 50, now=1)
    assert ledger.refusal("b", 100, now=2) is None and ledger.refusal("c", 80, now=3) is None
    assert "received its upload allowance" in ledger.refusal("d", 20, now=4)  # 240 + 20 > 250
    assert ledger.refusal("a", 10, now=5) is None  # refused bytes were not counted: 250 in all
    assert ledger.refusal("a", 60, now=3600.5) is None  # the first 60 left the window


def test_slots_serve_visitors_in_turn():
    """30 requests of one visitor ahead of a lone visitor's: the lone one gets the next free slot."""
    fair = slots.FairSlots(2)
    flood = [fair.ticket("10.0.0.66") for _ in range(30)]
    lone = fair.ticket("10.0.0.7")
    assert [t.granted for t in flood[:3]] == [True, True, False] and not lone.granted
    assert lone.ahead() == 0 and flood[2].ahead() == 1
    flood[0].release()
    assert lone.wait(0) and not flood[2].granted  # not the flooder's third
    flood[1].release()
    assert flood[2].wait(0)
    lone.release()
    assert flood[3].wait(0) and fair.busy() == 2 + 26
    for t in flood:
        t.release()
    assert fair.busy() == 0


def test_a_waiting_ticket_given_up_frees_its_place():
    fair = slots.FairSlots(1)
    first, second, third = fair.ticket("a"), fair.ticket("b"), fair.ticket("c")
    second.release()  # the visitor left while waiting
    first.release()
    assert third.wait(0) and fair.busy() == 1


def test_visitor_is_the_proxys_view_of_the_client():
    class R:
        def __init__(self, headers, host):
            self.headers, self.client = headers, type("C", (), {"host": host})()

    assert slots.visitor(R({"x-forwarded-for": "1.2.3.4, 10.9.8.7"}, "127.0.0.1")) == "10.9.8.7"
    assert slots.visitor(R({}, "192.168.0.5")) == "192.168.0.5"
    assert slots.visitor(None) == "local"


def test_waiting_counts_only_tickets_without_a_slot():
    fair = slots.FairSlots(1)
    a, b = fair.ticket("a"), fair.ticket("b")
    assert fair.waiting() == 1 and fair.busy() == 2
    a.release()
    assert fair.waiting() == 0 and b.granted
    b.release()
