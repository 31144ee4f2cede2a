"""Which rank says why a run of several ranks failed (``train.failures``), from the records the
ranks leave under ``ranks/``: a failure caused by another rank's says nothing, the lowest rank
with an error says it, a peer gone without a word is named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fastchgnet.train import failures


@pytest.fixture
def launch(tmp_path):
    """``begin(rank)``: this process as ``rank`` of 2 in the launch "t1" under ``tmp_path``."""

    def begin(rank: int) -> None:
        failures.begin(tmp_path, rank, 2, "t1")

    yield begin
    failures.end()


def _record(tmp_path, rank: int, error: str, token: str = "t1") -> None:
    path = tmp_path / "ranks" / f"failed-{token}-{rank:05d}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "error": error}))


def _own(tmp_path, rank: int) -> str | None:
    path = tmp_path / "ranks" / f"failed-t1-{rank:05d}.json"
    return json.loads(path.read_text())["error"] if path.is_file() else None


def test_rank_0_removes_the_records_of_earlier_launches_only(tmp_path, launch) -> None:
    _record(tmp_path, 1, "old", token="t0")
    _record(tmp_path, 1, "now")
    launch(0)
    assert failures.recorded() == {1: "now"}
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == ["failed-t1-00001.json"]


def test_a_failure_after_another_ranks_is_a_consequence_said_by_no_one(tmp_path, launch) -> None:
    launch(0)
    _record(tmp_path, 1, "RuntimeError: a bad batch")
    error = "RuntimeError: Connection closed by peer"
    assert failures.verdict(error, "own", peers=True, grace_s=0.0) is None
    assert _own(tmp_path, 0) is None  # no record: a later failure still looks to rank 1


def test_the_lowest_rank_with_an_error_says_it(tmp_path, launch) -> None:
    launch(0)
    _record(tmp_path, 1, "bad config")  # rank 1 was first: it waits for rank 0's record
    started = time.monotonic()
    assert failures.verdict("bad config", "own", peers=False) == "own"
    assert time.monotonic() - started < 1.0  # rank 0 waits for no one
    assert _own(tmp_path, 0) == "bad config"
    failures.begin(tmp_path, 1, 2, "t1")  # rank 1, whose error rank 0 has said
    assert failures.verdict("bad config", "own", peers=False) is None


def test_an_error_no_lower_rank_shares_is_said_after_the_grace(tmp_path, launch) -> None:
    launch(1)
    started = time.monotonic()
    assert failures.verdict("bad batch", "own", peers=False, grace_s=0.3) == "own"
    assert time.monotonic() - started >= 0.3
    assert _own(tmp_path, 1) == "bad batch"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_peer_gone_without_a_record_is_named(tmp_path, launch) -> None:
    launch(1)
    dead = _dead_pid()
    record = {"rank": 0, "pid": dead, "host": socket.gethostname()}
    (tmp_path / "ranks").mkdir(exist_ok=True)
    (tmp_path / "ranks" / "rank-00000.json").write_text(json.dumps(record))
    said = failures.verdict("RuntimeError: closed", "own", peers=True, grace_s=5.0)
    host = socket.gethostname()
    assert said == f"rank 1 stops: rank 0 (pid {dead} on {host}) is gone (RuntimeError: closed)"


def test_a_stop_by_the_launcher_says_nothing_where_a_rank_said_why(tmp_path, launch) -> None:
    launch(0)
    assert failures.on_stop(lambda: "peers") == "peers"  # no rank failed: a stop from outside
    _record(tmp_path, 1, "bad batch")
    assert failures.on_stop(lambda: "peers") is None


def test_a_stop_while_deciding_says_the_ranks_own_error(tmp_path, launch, monkeypatch) -> None:
    launch(1)
    (tmp_path / "ranks").mkdir(exist_ok=True)
    (tmp_path / "ranks" / "rank-00000.json").write_text(
        json.dumps({"rank": 0, "pid": os.getpid(), "host": socket.gethostname()})
    )
    _record(tmp_path, 1, "bad batch")  # written by verdict before it waits
    monkeypatch.setattr(failures, "_pending", ("bad batch", "own"))
    assert failures.on_stop(lambda: "peers") == "own"
    _record(tmp_path, 0, "bad batch")  # ... unless a lower rank says the same
    assert failures.on_stop(lambda: "peers") is None


def test_without_a_launch_nothing_is_known(tmp_path) -> None:
    failures.end()
    assert not failures.known()
    assert failures.on_stop(lambda: "peers") == "peers"
    failures.begin(tmp_path, 0, 1, "t1")  # one rank: nothing to decide
    assert not failures.known()
    failures.end()


def test_a_peer_that_stopped_on_this_ranks_failure_is_not_taken_for_gone(tmp_path, launch) -> None:
    """Rank 0 failed preparing the data (not a user error); rank 1 stopped on its refusal and
    exited: rank 0 named rank 1 as gone, without its own error. Rank 1 now records that it
    stopped on another's failure, and rank 0 says its own."""
    launch(0)
    dead = _dead_pid()
    record = {"rank": 1, "pid": dead, "host": socket.gethostname()}
    (tmp_path / "ranks").mkdir(exist_ok=True)
    (tmp_path / "ranks" / "rank-00001.json").write_text(json.dumps(record))
    failures.begin(tmp_path, 1, 2, "t1")
    failures.consequence()  # what rank 1 does on collectives.PeerStopped
    assert _own(tmp_path, 1) == ""
    launch(0)
    assert failures.recorded() == {}  # not a failure of its own
    said = failures.verdict("RuntimeError: disk went away", "own", peers=True, grace_s=0.3)
    assert said == "own"


def test_ranks_on_other_hosts_that_said_nothing_are_named_beside_a_collectives_error(
    tmp_path, launch
) -> None:
    """A peer killed on another host ends this rank in a collective's error; this rank cannot
    see that host's processes, so its traceback says which ranks there said nothing."""
    launch(0)
    (tmp_path / "ranks").mkdir(exist_ok=True)
    (tmp_path / "ranks" / "rank-00001.json").write_text(
        json.dumps({"rank": 1, "pid": os.getpid(), "host": "another-host"})
    )
    said = failures.verdict("RuntimeError: closed", "own", peers=True, grace_s=0.2)
    assert said == (
        "own\n(ranks [1] on other hosts, not checked from here, said nothing: if one of them "
        "is gone, this error follows from it)"
    )
    assert failures.verdict("bad config", "own", peers=False, grace_s=0.0) == "own"


def test_an_interrupt_is_said_by_rank_0_and_by_no_other(tmp_path, launch) -> None:
    """Ctrl-C under a launcher reaches every rank: each printed its "interrupted" line."""
    launch(0)
    started = time.monotonic()
    assert failures.interrupted(signal.SIGINT, "interrupted: ...") == "interrupted: ..."
    assert time.monotonic() - started < 1.0  # rank 0 waits for no one
    failures.begin(tmp_path, 1, 2, "t1")
    assert failures.interrupted(signal.SIGINT, "interrupted: ...") is None


def test_an_interrupt_rank_0_did_not_see_is_said_by_the_lowest_rank_that_did(tmp_path) -> None:
    failures.begin(tmp_path, 1, 3, "t1")
    try:
        assert failures.interrupted(signal.SIGINT, "own", grace_s=0.2) == "own"
        failures.begin(tmp_path, 2, 3, "t1")
        assert failures.interrupted(signal.SIGINT, "own", grace_s=5.0) is None
    finally:
        failures.end()


def test_the_ranks_an_interrupt_stops_next_say_nothing(tmp_path, launch) -> None:
    """A rank whose collective fails because an interrupted peer left, or whom the launcher
    then stops, is stopped by the interrupt that a rank has said."""
    launch(0)
    failures.interrupted(signal.SIGINT, "own")
    failures.begin(tmp_path, 1, 2, "t1")
    assert failures.verdict("RuntimeError: closed", "own", peers=True, grace_s=0.0) is None
    assert failures.on_stop(lambda: "peers") is None


def test_a_process_says_its_stop_line_once(tmp_path, launch, capsys) -> None:
    """The launcher's SIGTERM after a Ctrl-C reached a rank that had printed its interrupted
    line already, and its handler printed it again; a new launch says its own."""
    launch(0)
    assert not failures.saying()
    failures.say_once("interrupted: one")
    failures.say_once("interrupted: one")
    failures.say_once(None)
    assert capsys.readouterr().err == "interrupted: one\n"
    launch(0)
    failures.say_once("interrupted: two")
    assert capsys.readouterr().err == "interrupted: two\n"


def test_an_interrupt_noted_on_a_lower_rank_leaves_the_line_to_it(tmp_path, launch) -> None:
    """Rank 0 blocked in a collective runs no Python handler: the note made by its watcher
    thread is what rank 1 finds, within the grace, instead of printing the line itself."""
    launch(0)
    failures.note_interrupt(signal.SIGINT)
    assert _own(tmp_path, 0) == "interrupted by SIGINT"
    assert failures.noted_interrupt() == signal.SIGINT
    failures.begin(tmp_path, 1, 2, "t1")
    started = time.monotonic()
    assert failures.interrupted(signal.SIGINT, "own", grace_s=5.0) is None
    assert time.monotonic() - started < 1.0


def test_a_note_keeps_a_failure_recorded_before_it(tmp_path, launch) -> None:
    launch(1)
    assert failures.verdict("bad batch", "own", peers=False, grace_s=0.0) == "own"
    failures.note_interrupt(signal.SIGINT)
    assert _own(tmp_path, 1) == "bad batch"


def _sigint_to_this_process(handler) -> None:
    """Send SIGINT to this process with ``handler`` installed (the main thread's Python
    handler) and the interrupt watcher running, and give the watcher time to act."""
    previous = signal.signal(signal.SIGINT, handler)
    old_fd = signal.set_wakeup_fd(-1)
    try:
        failures._start_watcher.cache_clear()
        failures.watch_interrupts(lambda: spoken.append(None))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(failures.STUCK_S + 1.0)
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, previous)
        failures._start_watcher.cache_clear()


spoken: list[None] = []


def test_the_watcher_speaks_for_a_main_thread_that_runs_no_handler(tmp_path, launch) -> None:
    """A rank blocked in an NCCL collective runs no Python handler, and a peer's leaving does
    not end its wait: the watcher notes the SIGINT at once (its peers leave the line to it)
    and, unconfirmed by the main thread, says the line itself."""
    launch(0)
    spoken.clear()
    _sigint_to_this_process(lambda *_: None)  # a handler that never confirms
    assert _own(tmp_path, 0) == "interrupted by SIGINT"
    assert spoken == [None]


def test_the_watcher_leaves_the_line_to_a_main_thread_that_ran_its_handler(
    tmp_path, launch
) -> None:
    launch(0)
    spoken.clear()
    _sigint_to_this_process(lambda *_: failures.confirm_interrupt())
    assert _own(tmp_path, 0) == "interrupted by SIGINT"
    assert spoken == []
