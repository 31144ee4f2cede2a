"""bench/bench_train.py's accuracy table (issue #17): a test split, the equal-wall-time run,
seeds in parallel processes and the mean over seeds, on a tiny run of the bundled data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_reports_test_mae_equal_time_and_the_seed_mean(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(ROOT / "bench" / "bench_train.py"),
        *("--n", "24", "--epochs", "1", "--batch-size", "8"),
        *("--split", "0.6", "0.2", "0.2", "--loss", "1", "1", "0.1", "0.1"),
        *("--seeds", "0", "1", "--jobs", "2", "--no-reference", "--equal-wall-time"),
        *("--out", str(out)),
    ]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "MAE on the test split" in run.stdout
    assert "loss e/f/s/m 1/1/0.1/0.1" in run.stdout
    report = json.loads((out / "results.json").read_text())
    assert set(report) == {"seed 0", "seed 1", "mean"}
    names = {"ours conservative", "ours direct", "ours conservative, equal time"}
    assert set(report["mean"]) == names
    for seed in ("seed 0", "seed 1"):
        rows = report[seed]
        assert set(rows) == names
        assert rows["ours conservative"]["epochs"] == 1
        assert rows["ours conservative, equal time"]["epochs"] >= 1
        assert all(set(r["val"]) == set("efsm") for r in rows.values())
    # two seeds really are two runs: their direct models' errors differ
    assert report["seed 0"]["ours direct"]["val"] != report["seed 1"]["ours direct"]["val"]
    mean = report["mean"]["ours direct"]["val"]["f"]
    seeds = [report[s]["ours direct"]["val"]["f"] for s in ("seed 0", "seed 1")]
    assert abs(mean - sum(seeds) / 2) < 1e-9
