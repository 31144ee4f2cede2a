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
from fastchgnet.numerics import flush_denormals, start_thread_team_flushing
torch.set_num_threads(2)
if {start}:
    start_thread_team_flushing()
else:
    torch.ones(1 << 20).sum()  # the team starts outside flush_denormals
tiny = torch.full((1 << 22,), 1e-39)  # made before flushing
with flush_denormals():
    survivors = int(((tiny * 1.0) != 0).sum())
print(survivors)
"""


@pytest.mark.parametrize("start", [True, False])
def test_thread_team_started_flushing_flushes_on_every_thread(start, denormal_support) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", TEAM_CHECK.format(start=start)],
        capture_output=True, text=True, check=True, cwd=root, env={"PYTHONPATH": str(root)},
    )  # fmt: skip
    survivors = int(out.stdout.split()[-1])
    if start:
        assert survivors == 0  # both threads flushed
    else:
        assert survivors > 0  # the control: the worker thread did not


#: a process whose first model-side call (``flush_denormals``) settles the allocator, then holds
#: ten 5 MiB tensors at once and frees them, five times over; prints its minor page faults over
#: the five rounds and how many bytes its resident set shrank when one round's tensors were freed
_REUSE = """
import os, resource, torch
from fastchgnet.numerics import flush_denormals
with flush_denormals():
    pass
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def round_():
    live = [torch.ones(5 * 2**18) for _ in range(10)]
    held = rss()
    del live
    return held - rss()
round_(); round_()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    shrunk = round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start, shrunk)
"""


def _faults_and_shrink(env: dict[str, str]) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _REUSE], env=env, capture_output=True, text=True, check=True
    )
    faults, shrunk = out.stdout.split()[-2:]
    return int(faults), int(shrunk)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("huge_pages", [False, True])
def test_model_calls_keep_freed_memory_instead_of_faulting_it_back(huge_pages: bool) -> None:
    """Freed tensors stay resident for the next step, which then takes (almost) no page faults.

    Measured in bytes of resident set, not in faults alone: where the heap gets transparent huge
    pages (a kernel with THP always on; here glibc's ``hugetlb`` tunable stands in for it), one
    fault brings in 2 MiB, so 250 MiB faulted back is only ~150-1,300 faults."""
    env = dict(os.environ)
    env.pop("FASTCHGNET_KEEP_FREED_MEMORY", None)
    if huge_pages:
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    kept, kept_shrunk = _faults_and_shrink(env)
    returned, returned_shrunk = _faults_and_shrink({**env, "FASTCHGNET_KEEP_FREED_MEMORY": "0"})
    assert returned_shrunk > 20 * 2**20  # the control: glibc's default gives most back
    assert kept_shrunk < 5 * 2**20  # kept: the freed 50 MiB stay resident for reuse
    assert kept < returned / 4  # ...so the next rounds fault (almost) nothing back in
