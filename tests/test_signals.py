"""One stop handling for every long job (``fastchgnet.signals``): SIGINT raises
KeyboardInterrupt and SIGTERM SystemExit(143) (the exit codes a shell expects), a handler
someone else set (a launcher's, an enclosing job's) or an ignored SIGINT is left alone, and
the previous handlers come back."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fastchgnet.signals import Stopped, StopSignals, stop_signal, stop_signals


@pytest.fixture
def default_handlers():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)]
)
def test_a_jobs_signals_raise_what_ends_a_process_with_the_shells_code(
    default_handlers, signum, raised
):
    with pytest.raises(raised) as stop, stop_signals():
        os.kill(os.getpid(), signum)
    assert stop_signal(stop.value) == signum
    if raised is SystemExit:
        assert stop.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_set_before_the_job_is_left_alone(default_handlers):
    seen = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background shell job
    with stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_an_enclosing_jobs_handler_serves_a_nested_one(default_handlers):
    outer = StopSignals()
    with outer.installed(), outer.deferred(), stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # the outer job's request, not the inner's stop
        assert outer.requested


def test_the_signal_of_a_stop_is_read_from_any_of_its_forms():
    assert stop_signal(KeyboardInterrupt()) == signal.SIGINT
    assert stop_signal(Stopped(signal.SIGTERM)) == signal.SIGTERM
    assert Stopped(signal.SIGTERM).exit_code == 143
    assert stop_signal(SystemExit(143)) == signal.SIGTERM
    assert stop_signal(SystemExit(2)) is None  # argparse's usage error is no stop


@pytest.mark.parametrize(("signum", "killed"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_forked_child_leaves_sigint_to_its_parent_and_dies_of_sigterm(
    default_handlers, signum, killed
):
    """A child forked under a job's handler, signalled before its own set-up: it returned
    from SIGTERM too, so a Pool.terminate in that window waited on it for ever."""
    import time

    with StopSignals().installed():
        pid = os.fork()
        if pid == 0:  # the child: no pytest machinery past this point
            try:
                os.kill(os.getpid(), signum)
                time.sleep(0.2)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) == killed
    if killed:
        assert os.WTERMSIG(status) == signal.SIGTERM
    else:
        assert os.WEXITSTATUS(status) == 0


def test_a_child_set_up_by_quiet_child_ignores_sigint_and_takes_sigterm_as_asked(
    default_handlers,
):
    from fastchgnet.signals import quiet_child

    quiet_child(ignore_sigterm=True)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    quiet_child()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_held_signals_deliver_a_stop_once_the_block_ends(default_handlers):
    from fastchgnet.signals import held_signals

    reached: list[str] = []

    def stop_inside() -> None:
        other = threading.Thread(target=time.sleep, args=(0.3,))  # a thread that may take it
        other.start()
        with held_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append("the block's end")  # not raised inside
        other.join()

    with pytest.raises(KeyboardInterrupt):
        stop_inside()
    assert reached == ["the block's end"]
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}
