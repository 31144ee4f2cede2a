"""flush_denormals: denormal floats become zero inside, nothing changes outside; freed memory
is kept for reuse once a model call has run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastchgnet.numerics import flush_denormals

TINY = 1e-39  # below float32's smallest normal number, 1.18e-38


def survives(value: float) -> bool:
    return bool((torch.tensor([value], dtype=torch.float32) * 1.0).item() != 0.0)


@pytest.fixture
def denormal_support() -> None:
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    torch.set_flush_denormal(False)


def test_denormals_flushed_inside_and_kept_outside(denormal_support: None) -> None:
    assert survives(TINY)
    with flush_denormals() as active:
        assert active
        assert not survives(TINY)
        assert survives(1e-30)  # normal numbers untouched
        with flush_denormals():  # nesting: the inner exit keeps the outer setting
            pass
        assert not survives(TINY)
    assert survives(TINY)


def test_environment_variable_turns_it_off(
    denormal_support: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTCHGNET_FLUSH_DENORMALS", "0")
    with flush_denormals() as active:
        assert not active
        assert survives(TINY)


def test_state_restored_after_an_exception(denormal_support: None) -> None:
    with pytest.raises(ValueError, match="boom"), flush_denormals():
        raise ValueError("boom")
    assert survives(TINY)


def test_works_as_a_decorator_on_every_call(denormal_support: None) -> None:
    @flush_denormals()
    def inside() -> bool:
        return survives(TINY)

    assert not inside()
    assert not inside()  # a fresh context each call
    assert survives(TINY)


TEAM_CHECK = """
import torch
from fastchgnet.numerics import flush_denormals, flush_thread_team
torch.set_num_threads(2)
if "{case}" == "started inside":
    flush_thread_team()
else:
    torch.ones(1 << 20).sum()  # the team starts outside flush_denormals, its workers unflushed
if "{case}" in ("more threads later", "another Python thread"):
    with flush_denormals():  # this thread's team checked and restarted
        pass
if "{case}" == "more threads later":
    torch.set_num_threads(3)
    torch.ones(1 << 20).sum()  # the third thread starts outside, unflushed
tiny = torch.full((1 << 22,), 1e-39)  # made before flushing
def count():
    global survivors
    if "{case}" == "another Python thread":
        torch.ones(1 << 20).sum()  # this thread's own team starts outside, unflushed
    with flush_denormals():
        survivors = int(((tiny * 1.0) != 0).sum())
if "{case}" == "main thread only":
    torch.set_flush_denormal(True)  # what torch's own switch reaches: this thread
    survivors = int(((tiny * 1.0) != 0).sum())
elif "{case}" == "another Python thread":
    import threading
    thread = threading.Thread(target=count)
    thread.start()
    thread.join()
else:
    count()
print(survivors)
"""


@pytest.mark.parametrize(
    "case",
    [
        "started inside",
        "started outside",
        "more threads later",
        "another Python thread",
        "main thread only",
    ],
)
def test_every_thread_of_the_team_flushes_inside_however_it_started(
    case: str, denormal_support: None
) -> None:
    """A team whose worker threads started outside ``flush_denormals`` (any parallel op before
    ours, a thread added by a later ``set_num_threads``, or the team of another Python thread,
    which the main thread's check does not cover) is restarted by the first
    ``flush_denormals`` so that every thread flushes; torch's switch alone (the control)
    reaches only the calling thread."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", TEAM_CHECK.format(case=case)],
        capture_output=True, text=True, check=True, cwd=root, env={"PYTHONPATH": str(root)},
    )  # fmt: skip
    survivors = int(out.stdout.split()[-1])
    if case == "main thread only":
        assert survivors > 0  # the control: the workers' share came out denormal
    else:
        assert survivors == 0  # every thread flushed


#: a process whose first model-side call (``flush_denormals``) settles the allocator. It prints:
#: - how many bytes its resident set shrank when it freed one tensor of 24, 26, 28 and 30 MiB in
#:   turn (the fewest after the first, then the most). With glibc's defaults each is a mapping
#:   of its own (each is larger than the last, which raised the dynamic threshold only to its
#:   own size), so each free gives it back, whatever else lies on the heap;
#: - its minor page faults while it holds ten 5 MiB tensors at once and frees them, five times
#:   over (after five rounds to settle: the kept heap took up to three here, and more on CI,
#:   whose 6,401 faults after two were one 5 MiB tensor per counted round). glibc's defaults
#:   put these on the heap and give them back or not depending on what else lies at the
#:   heap's top (the process's environment moves it), so only the kept side's count is checked.
_REUSE = """
import os, resource, torch
from fastchgnet.numerics import flush_denormals
with flush_denormals():
    pass
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def freed(numel):
    tensor = torch.ones(numel)
    held = rss()
    del tensor
    return held - rss()
shrunk = [freed(mib * 2**18) for mib in (24, 26, 28, 30)]
def round_():
    live = [torch.ones(5 * 2**18) for _ in range(10)]
    del live
for _ in range(5):
    round_()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(min(shrunk[1:]), max(shrunk), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _shrink_and_faults(env: dict[str, str]) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _REUSE], env=env, capture_output=True, text=True, check=True
    )
    fewest, most, faults = out.stdout.split()[-3:]
    return int(fewest), int(most), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("huge_pages", [False, True])
def test_model_calls_keep_freed_memory_instead_of_faulting_it_back(huge_pages: bool) -> None:
    """Freed tensors stay resident for the next step, which then takes few page faults.

    Measured in bytes of resident set, not in faults alone: where the heap gets transparent huge
    pages (a kernel with THP always on; here glibc's ``hugetlb`` tunable stands in for it), one
    fault brings in 2 MiB, so 250 MiB faulted back is only ~150-1,300 faults."""
    env = dict(os.environ)
    env.pop("FASTCHGNET_KEEP_FREED_MEMORY", None)
    if huge_pages:
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    _, kept_shrunk, kept_faults = _shrink_and_faults(env)
    returned_shrunk, _, _ = _shrink_and_faults({**env, "FASTCHGNET_KEEP_FREED_MEMORY": "0"})
    assert returned_shrunk > 20 * 2**20  # the control: glibc's default gives each one back
    assert kept_shrunk < 2**20  # kept: every freed tensor stays resident for reuse
    # ...and the 250 MiB the five rounds hold fault back in at most a tenth (4 KiB pages)
    assert kept_faults < 250 * 2**20 // 4096 // 10
