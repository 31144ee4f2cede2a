"""Op counter, peak memory and NVTX ranges."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.profiling.counters import count_ops
from fastchgnet.profiling.memory import PeakMemory, exact_rss
from fastchgnet.profiling.nvtx import FORWARD, nvtx_enabled, ranged, stage


def test_op_counter_counts_each_dispatched_aten_op_per_step():
    x = torch.ones(8, 8)
    counts = count_ops(lambda: (x + 1).mul(2).sum(), steps=3)
    assert counts.by_name["aten::add"] == 1
    assert counts.by_name["aten::mul"] == 1
    assert counts.top_level_ops == 3
    assert counts.aten_ops >= 3
    assert counts.cuda_kernels == 0 or torch.cuda.is_available()


def test_peak_memory_sees_a_block_that_allocates_and_frees_100_mib():
    with exact_rss(), PeakMemory("cpu", interval=0.0002) as peak:
        blocks = [torch.ones(1024, 1024, 5) for _ in range(5)]  # 5 x 20 MiB
        del blocks
    assert 60 < peak.peak_mib < 200
    assert 99 < peak.tensor_peak_mib < 101  # exact: the allocator held 5 x 20 MiB at once


def test_allocator_peak_counts_temporaries_that_are_freed_before_the_end():
    x = torch.ones(256, 1024)  # 1 MiB
    with PeakMemory("cpu") as peak:
        y = (x * 2).sum()  # the product (1 MiB) lives only inside this line
    assert y.item() == 2 * x.numel()
    assert 1.0 <= peak.tensor_peak_mib < 1.01  # the product and the 0-d sum


def test_nvtx_ranges_are_no_ops_without_cuda():
    @ranged(FORWARD)
    def double(x: int) -> int:
        return 2 * x

    with stage("anything"):
        assert double(2) == 4
    assert nvtx_enabled() == (torch.cuda.is_available() and nvtx_enabled())


@pytest.mark.usefixtures("one_thread")
def test_profile_report_counts_fewer_ops_for_our_step_than_the_reference():
    pytest.importorskip("chgnet")
    from fastchgnet.cli.profile import build_parser, run

    arguments = ["--batch-size", "4", "--max-atoms", "8", "--no-compile", "--device", "cpu"]
    counts = run(build_parser().parse_args(arguments))
    assert set(counts) == {"reference chgnet", "fastchgnet conservative eager"}
    assert 0 < counts["fastchgnet conservative eager"] < counts["reference chgnet"]
