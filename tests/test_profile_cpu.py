"""``fastchgnet profile --device cpu``: no CUDA kernel column (a CPU runs none) and no Nsight
Systems hint (a GPU timeline); the aten operator counts only."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.cli import main


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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--batch-size", "0"], "--batch-size 0 and --max-atoms 108: need at least 1"),
        (["--max-atoms", "-3"], "--max-atoms -3: need at least 1"),
    ]
    + [(["--device", "cuda"], "--device 'cuda'")] * (not torch.cuda.is_available()),
)
def test_profile_settings_that_cannot_run_are_one_line_errors(capsys, args, says):
    # a RuntimeError from deep in chgnet's composition model, an AssertionError from torch
    assert main(["profile", "--no-reference", "--no-compile", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert says in err
