"""The quick start (``python launcher/train.py`` with no arguments) learns every target: the
R² floors on the held-out test split that the README promises, and the files it writes."""

from __future__ import annotations

import pytest

from fastchgnet.train.config import TrainConfig, with_run
from fastchgnet.train.run import train


@pytest.mark.slow
def test_quickstart_reaches_the_r2_floors_on_the_test_split(tmp_path) -> None:
    config = with_run(TrainConfig(), out_dir=str(tmp_path / "run"), progress="lines")
    summary = train(config)
    test = summary.test
    assert test["forces_r2"] >= 0.6, test
    assert test["energy_r2"] >= 0.97, test
    assert test["stress_r2"] > 0.0, test
    assert test["magmoms_r2"] > 0.0, test
    for name in ("parity-test.png", "parity-val.png", "learning-curve.png", "metrics.csv"):
        assert (tmp_path / "run" / name).is_file(), name
