"""The "loss" selection score weighs each validation MAE by its loss prefactor in the unit the
loss measures it in, so stress and magnetic moments count as the loss weighs them; and
best_model.txt says what its score is."""

from __future__ import annotations

import pytest

from fastchgnet.train.selection import save_best, score_definition, validation_score

PAPER = {"energy": 2.0, "forces": 1.5, "stress": 0.1, "magmoms": 0.1}


def test_the_loss_score_counts_stress_and_magmoms_as_the_loss_weighs_them():
    # 30 meV/atom, 70 meV/Å, 0.3 GPa, 0.03 μB: energy and forces enter in eV, as in the loss
    results = {"energy_mae": 30.0, "forces_mae": 70.0, "stress_mae": 0.3, "magmoms_mae": 0.03}
    assert validation_score(results, "loss", PAPER) == pytest.approx(0.06 + 0.105 + 0.03 + 0.003)
    worse_stress = results | {"stress_mae": 1.3}
    assert validation_score(worse_stress, "loss", PAPER) == pytest.approx(0.298)


class _Model:
    def save(self, path) -> None:
        path.write_bytes(b"model")


def test_best_model_txt_names_the_score_and_its_units(tmp_path):
    definition = score_definition("loss", PAPER)
    save_best(_Model(), tmp_path, 3, 0.198, "loss", definition)
    assert (tmp_path / "best_model.txt").read_text() == (
        "epoch 3: validation loss 0.198 (loss prefactor-weighted MAE in the loss's units: "
        "2 x energy MAE (eV/atom) + 1.5 x forces MAE (eV/Å) + 0.1 x stress MAE (GPa) + "
        "0.1 x magmoms MAE (μB))\n"
    )
    assert score_definition("forces_mae", PAPER) == "forces MAE in meV/Å"
