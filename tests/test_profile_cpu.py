"""``fastchgnet profile --device cpu``: no CUDA kernel column (a CPU runs none) and no Nsight
Systems hint (a GPU timeline); the aten operator counts only."""

from __future__ import annotations

import pytest


@pytest.mark.usefixtures("one_thread")
def test_profile_on_a_cpu_prints_no_cuda_kernel_column_and_no_nsys_hint(capsys):
    from fastchgnet.cli.profile import build_parser, run

    arguments = ["--batch-size", "2", "--max-atoms", "4", "--mode", "direct"]
    arguments += ["--no-compile", "--no-reference", "--device", "cpu"]
    counts = run(build_parser().parse_args(arguments))
    printed = capsys.readouterr().out
    assert counts["fastchgnet direct eager"] > 0  # aten operators on a CPU
    assert "aten ops" in printed
    assert "CUDA" not in printed
    assert "nsys" not in printed
