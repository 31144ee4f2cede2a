"""Metrics: MAE in the reported units and R² as numpy computes them, masks respected."""

from __future__ import annotations

import numpy as np
import torch

from fastchgnet.model.chgnet import Prediction
from fastchgnet.train.metrics import MetricSums, append_csv, format_table
from fastchgnet.train.plots import parity_plot
from tests.model.test_loss import _batch


def test_mae_and_r2_match_numpy_over_labelled_entries_across_batches() -> None:
    sums = MetricSums()
    predicted, labelled = [], []
    for seed in range(3):
        prediction, labels = _batch(seed)
        sums.add(prediction, labels)
        mask = labels.forces_mask
        predicted.append(prediction.forces.detach()[mask].numpy().ravel())
        labelled.append(labels.forces[mask].numpy().ravel())
    p, y = np.concatenate(predicted), np.concatenate(labelled)
    results = sums.results()
    assert np.isclose(results["forces_mae"], 1000 * np.abs(p - y).mean())
    r2 = 1 - ((p - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert np.isclose(results["forces_r2"], r2)
    assert "magmoms_mae" not in results  # no magmom label in any batch


def test_energy_mae_is_in_mev_per_atom() -> None:
    prediction = Prediction(energy=torch.tensor([1.0, 2.0]), total_energy=torch.zeros(2))
    _, labels = _batch()
    labels.energy, labels.energy_mask = torch.tensor([1.01, 2.0]), torch.tensor([True, True])
    sums = MetricSums()
    sums.add(prediction, labels)
    assert np.isclose(sums.results()["energy_mae"], 5.0, atol=1e-4)


def test_table_csv_and_parity_plot_are_written(tmp_path) -> None:
    sums = MetricSums()
    prediction, labels = _batch()
    labels.energy_mask[:] = True
    sums.add(prediction, labels)
    table = format_table({"val": sums.results()})
    assert "e MAE (meV/atom)" in table
    assert "val" in table
    append_csv(tmp_path / "m.csv", {"epoch": 1, **sums.results()})
    append_csv(tmp_path / "m.csv", {"epoch": 2, **sums.results()})
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 3
    path = parity_plot(sums, tmp_path / "parity.png", "test")
    assert path is not None
    assert path.read_bytes()[:4] == b"\x89PNG"
