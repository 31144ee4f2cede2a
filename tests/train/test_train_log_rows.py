"""train_log.csv: a row every ``run.log_every`` steps (and at an epoch's last step) holding its
window's mean loss over the finite steps of every rank (``step.StepTotals.read``). In one
process that is the process's own mean, as it always was: each row equals the mean of the
per-step rows of the same run logged at every step."""

from __future__ import annotations

import csv

from fastchgnet.train.run import train
from tests.train.helpers import small_cache, tiny_config


def _rows(out) -> list[dict[str, str]]:
    with (out / "train_log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_one_process_row_is_the_mean_of_its_windows_steps(tmp_path) -> None:
    cache = small_cache(tmp_path / "cache", n=24)
    common = ("optim.epochs=2", "data.batch_size=3")  # 22 structures: 8 steps an epoch
    train(tiny_config(cache, tmp_path / "each", "run.log_every=1", *common))
    train(tiny_config(cache, tmp_path / "three", "run.log_every=3", *common))
    steps = {int(row["global_step"]): float(row["loss"]) for row in _rows(tmp_path / "each")}
    assert sorted(steps) == list(range(1, 17))
    rows = _rows(tmp_path / "three")
    # windows of 3 steps, cut short at each epoch's end (steps 7-8 and 16)
    assert [int(row["global_step"]) for row in rows] == [3, 6, 8, 9, 12, 15, 16]
    before = 0
    for row in rows:
        end = int(row["global_step"])
        total = 0.0
        for step in range(before + 1, end + 1):  # summed in float64 in step order, as the device
            total += steps[step]
        assert float(row["loss"]) == total / (end - before), row  # the same float
        assert row["skipped"] == "0"
        before = end
