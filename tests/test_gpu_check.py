"""bench/gpu_check.py's checks of a run's summary.json: they fail on what the GPU acceptance
forbids (a second graph, a recompile, a CUDA-graph skip, unchecked host syncs, NaN metrics)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", PATH)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

GOOD = {
    "structures_per_second": 120.0,
    "graphs": 1,
    "recompiles": 0,
    "cudagraph_skips": 0,
    "peak_memory_bytes": 2**30,
    "host_syncs_checked": True,
    "val": {"e_mae": 0.03, "f_mae": 0.1},
    "test": {"e_mae": 0.03},
}


def _run(tmp_path: Path, **changes) -> Path:
    (tmp_path / "summary.json").write_text(json.dumps({**GOOD, **changes}))
    return tmp_path


def test_a_good_compiled_run_passes(tmp_path):
    assert gpu_check.verify(_run(tmp_path), "a", cpu=False, compiled=True) == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"graphs": 2}, "graphs = 2"),
        ({"recompiles": 1}, "recompiles = 1"),
        ({"cudagraph_skips": 3}, "cudagraph_skips = 3"),
        ({"host_syncs_checked": False}, "host synchronisations"),
        ({"val": {"e_mae": float("nan")}}, "e_mae"),
    ],
)
def test_forbidden_outcomes_fail_and_are_named(tmp_path, changes, named):
    failures = gpu_check.verify(_run(tmp_path, **changes), "a", cpu=False, compiled=True)
    assert len(failures) == 1
    assert named in failures[0]


def test_missing_summary_fails_on_a_gpu_and_falls_back_to_the_log_on_a_cpu(tmp_path):
    assert "missing" in gpu_check.verify(tmp_path, "a", cpu=False, compiled=True)[0]
    (tmp_path / "run.log").write_text("compile: 2 graph(s), 1 recompile(s), 9.0 s tracing\n")
    failures = gpu_check.verify(tmp_path, "a", cpu=True, compiled=True)
    assert failures == [
        "stage a: graphs = 2, expected 1",
        "stage a: recompiles = 1, expected 0",
    ]


def test_slice_keeps_whole_frames(tmp_path):
    out = tmp_path / "frames.extxyz"
    gpu_check.slice_frames(5, out)
    lines = out.read_text().splitlines()
    frames, start = 0, 0
    while start < len(lines):
        start += int(lines[start]) + 2
        frames += 1
    assert frames == 5
    assert start == len(lines)
