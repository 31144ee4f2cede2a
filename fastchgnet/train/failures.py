"""Which rank says why a run of several ranks stopped: the error once, by the rank it happened on.

When one rank fails, every rank stops: the others fail in their next collective (a closed
connection, a timeout), are stopped by the launcher (SIGTERM), or stop on rank 0's refusal of
the data (``collectives.PeerStopped``). Each used to print its own line, so 8 ranks printed
the error and 7 echoes of it. Now a rank that fails records its error in
``<out_dir>/ranks/failed-<launch token>-<rank>.json`` before it says anything (and so before
its exit stops the others), and ``verdict`` decides what it prints:

    another rank recorded a different error first   nothing: this failure is a consequence
    a lower rank recorded the same error            nothing: that rank prints it (every rank
                                                    meeting the same bad config or data)
    a peer on this host is gone without a record    one line naming it (killed: no one else
                                                    can say more)
    none of these                                   its error, naming its rank

A rank waits up to ``GRACE_S`` for a lower rank's record of the same error (ranks meet such an
error within moments of each other, as they leave the same collective) and, for an error that
may come from a collective, for a peer's process to be gone (a killed peer closes its sockets
before its process ends). The launch token (agreed in one collective as the run starts, ``begin``)
keeps a record of an earlier launch in the same folder from counting. Before it, or without a
launcher, there are no records: ``known()`` is False and the caller reports as one process.

A stop by a signal is said the same way (``interrupted``): Ctrl-C reaches every rank, and each
printed its "interrupted ..." line; now each records it, and the lowest rank that was stopped
by it (rank 0, where all were) prints the line, the others nothing. A rank blocked in a
collective runs no Python signal handler until the collective returns, which after a Ctrl-C is
when a peer that stopped first has left: a watcher thread (``watch_interrupts``, started by
``cli.train``) records the signal the moment it arrives (``note_interrupt``), so the peer
finds the lower rank's record and leaves the line to it. A process prints its stop line at
most once (``say_once``), however many of its paths reach it (the launcher's SIGTERM after a
Ctrl-C, the watcher).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastchgnet.files import write_json_atomic
from fastchgnet.train import collectives

#: seconds a failing rank waits for a lower rank's record of its error, or a gone peer
GRACE_S = 5.0


@dataclass
class Launch:
    out: Path
    rank: int
    world_size: int
    token: str

    def record(self, rank: int) -> Path:
        return self.out / "ranks" / f"failed-{self.token}-{rank:05d}.json"


_launch: Launch | None = None
#: (error, what to print) of this rank while ``verdict`` waits: said if the launcher stops it
_pending: tuple[str, str] | None = None
#: the signal ``note_interrupt`` recorded for this rank (None: none)
_noted: int | None = None
#: this process's stop line (``say_once``): claimed by a path that prints it, then printed
_line = {"claimed": False, "printed": False}
#: set by the main thread's SIGINT handler (``confirm_interrupt``)
_confirmed = threading.Event()
#: what the watcher calls where the main thread has not confirmed a SIGINT (``watch_interrupts``)
_speak: list[Callable[[], None]] = []
#: seconds the watcher waits for that confirmation
STUCK_S = 1.0


def begin(out: Path, rank: int, world_size: int, token: str) -> None:
    """This process is ``rank`` of ``world_size`` in the launch ``token`` (the same on every
    rank, agreed by a collective); rank 0 removes the records of earlier launches."""
    global _launch
    _launch = Launch(Path(out), rank, world_size, token)
    _line.update(claimed=False, printed=False)
    if rank == 0:
        for path in (Path(out) / "ranks").glob("failed-*.json"):
            if not path.name.startswith(f"failed-{token}-"):
                path.unlink(missing_ok=True)


def end() -> None:
    """Forget the launch (a process that trains once more, as tests do)."""
    global _launch, _noted
    _launch, _noted = None, None
    _line.update(claimed=False, printed=False)
    _confirmed.clear()


def known() -> bool:
    """Whether this process is a rank of a launch of several ranks that has begun."""
    return _launch is not None and _launch.world_size > 1


def recorded(consequences: bool = False) -> dict[int, str]:
    """{rank: error} of the other ranks of this launch that recorded a failure (one listing
    of ``ranks/``: a failing rank of thousands reads the records there are, not one each);
    with ``consequences`` also the ranks that recorded stopping on another's failure
    (``consequence``; their error "")."""
    if _launch is None:
        return {}
    found = {}
    for path in (_launch.out / "ranks").glob(f"failed-{_launch.token}-*.json"):
        try:
            record = json.loads(path.read_text())
            if int(record["rank"]) != _launch.rank and (consequences or record["error"]):
                found[int(record["rank"])] = str(record["error"])
        except (OSError, ValueError, KeyError):  # removed, or not ours
            continue
    return found


def consequence() -> None:
    """Record that this rank stops because another failed (``collectives.PeerStopped``): it
    prints nothing, and the failing rank, finding its process gone, does not take it for a
    peer killed without a word (``verdict``). Only where ``known()``."""
    if known():
        assert _launch is not None
        path = _launch.record(_launch.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"rank": _launch.rank, "error": ""})


def verdict(error: str, own: str, *, peers: bool, grace_s: float = GRACE_S) -> str | None:
    """What this rank prints for its failure ``error`` (one line: it is compared with the
    other ranks' records): ``own`` (this rank's report of it) where the failure is its own,
    a line naming a peer on this host that is gone where ``peers`` (an error that may come
    from a collective) and that peer left no record, None where another rank's record
    explains it (see the module docstring). Only where ``known()``."""
    global _pending
    assert _launch is not None
    if any(other != error for other in recorded().values()):
        return None  # another rank failed first: it says why
    path = _launch.record(_launch.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"rank": _launch.rank, "error": error})
    _pending = (error, own)
    local = collectives.peer_records(_launch.out, _launch.rank)[0] if peers else []
    try:
        deadline = time.monotonic() + grace_s
        while True:
            lower = _lower(recorded())
            if error in lower.values():
                return None
            gone = _silent_gone(local) if peers else ""
            if gone:
                return f"{gone} ({error})"
            if time.monotonic() >= deadline or (len(lower) == _launch.rank and not peers):
                return own + _elsewhere_note(peers)
            time.sleep(0.1)
    finally:
        _pending = None


def interrupted(signum: int, own: str, grace_s: float = GRACE_S) -> str | None:
    """What a rank stopped by signal ``signum`` prints: ``own`` (its "interrupted ..." line)
    where no lower rank recorded the same stop within ``grace_s`` (rank 0 at once), None where
    one did, or where another rank's failure came first (printed through ``say_once``). Only
    where ``known()``."""
    return verdict(_stop(signum), own, peers=False, grace_s=grace_s)


def note_interrupt(signum: int) -> None:
    """Record that signal ``signum`` stopped this rank, as ``interrupted`` would, from any
    thread and before this rank's main thread can (it may be blocked in a collective); a
    rank that recorded anything already keeps it. Only where ``known()``."""
    global _noted
    if not known():
        return
    assert _launch is not None
    path = _launch.record(_launch.rank)
    _noted = signum
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"rank": _launch.rank, "error": _stop(signum)})


def noted_interrupt() -> int | None:
    """The signal ``note_interrupt`` recorded for this rank (None: none): a collective that
    then fails on this rank failed because the signal stopped its peers too."""
    return _noted


def watch_interrupts(speak: Callable[[], None]) -> None:
    """Record this rank's SIGINT the moment it arrives (``note_interrupt``), from a daemon
    thread that Python's C-level handler wakes through the wakeup pipe while the Python
    handler waits for the main thread; and where the main thread has not run that handler
    (``confirm_interrupt``) within ``STUCK_S``, call ``speak``: a main thread blocked in a
    collective that a peer's leaving does not end (NCCL) would say nothing before the
    launcher kills it, and its peers leave the line to it. Call from the main thread
    (``signal.set_wakeup_fd``); one watcher a process, ``speak`` the latest given."""
    _speak[:] = [speak]
    _start_watcher()


@functools.cache  # one watcher a process
def _start_watcher() -> None:
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        while data := os.read(read, 64):
            if signal.SIGINT.value in data:
                note_interrupt(signal.SIGINT)
                if known() and not _confirmed.wait(STUCK_S) and _speak:
                    _speak[0]()

    threading.Thread(target=watch, name="fastchgnet-interrupts", daemon=True).start()


def confirm_interrupt() -> None:
    """The main thread's SIGINT handler ran: the main thread says the stop itself."""
    _confirmed.set()


def say_once(line: str | None) -> None:
    """Print ``line`` on stderr unless a path of this process claimed its stop line already
    (the main thread's, its SIGTERM handler's, the watcher's: one line whichever comes
    first); None prints nothing."""
    if line is None or _line["claimed"]:
        return
    _line["claimed"] = True
    print(line, file=sys.stderr, flush=True)
    _line["printed"] = True


def saying() -> bool:
    """Whether a path of this process claimed the stop line and has not printed it yet (a
    handler that ran in between leaves the printing to it instead of ending the process)."""
    return _line["claimed"] and not _line["printed"]


def _stop(signum: int) -> str:
    return f"interrupted by {signal.Signals(signum).name}"


def on_stop(peer_line: Callable[[], str]) -> str | None:
    """What a rank stopped by the launcher's SIGTERM prints: its own error where it was
    still deciding (``verdict``; unless a lower rank said the same, or a peer that left no
    record is gone: ``peer_line()``), nothing where another rank recorded why the run
    failed, else ``peer_line()`` (a peer killed without a word, or a stop from outside)."""
    if not known():
        return peer_line()
    if _pending is not None:
        error, own = _pending
        if error in _lower(recorded()).values():
            return None
        return peer_line() if _silent_gone() else own
    return None if recorded() else peer_line()


def _lower(records: dict[int, str]) -> dict[int, str]:
    assert _launch is not None
    return {rank: error for rank, error in records.items() if rank < _launch.rank}


def _elsewhere_note(peers: bool) -> str:
    """Where ``peers`` (an error that may come from a collective): a line naming the ranks on
    other hosts without a record, whose processes this rank cannot see, as the cause it may
    be ("" where there are none): a peer killed there ends this rank in the same error."""
    assert _launch is not None
    if not peers:
        return ""
    said = recorded(consequences=True)
    elsewhere = [r for r in collectives.peer_records(_launch.out, _launch.rank)[1] if r not in said]
    if not elsewhere:
        return ""
    return (
        f"\n(ranks {elsewhere} on other hosts, not checked from here, said nothing: if one of "
        "them is gone, this error follows from it)"
    )


def _silent_gone(local: list[tuple[int, int]] | None = None) -> str:
    """The peers on this host whose processes are gone without a record, in words ("" none;
    ``local``: ``collectives.peer_records``' list, read when None); a rank that recorded
    stopping on this rank's failure (``consequence``) has said its word."""
    assert _launch is not None
    said = recorded(consequences=True)
    gone = collectives.gone_peers(_launch.out, _launch.rank, local)
    names = [name for rank, name in sorted(gone.items()) if rank not in said]
    return f"rank {_launch.rank} stops: {', '.join(names)} is gone" if names else ""
