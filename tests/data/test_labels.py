"""collate_labels: targets aligned with collate, missing labels masked."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastchgnet.data.labels import LABEL_FIELDS, LabelBatch, collate_labels


def _labels(n, energy=-1.0, forces=True, stress=True, magmoms=True):
    return SimpleNamespace(
        energy_per_atom=energy,
        forces=np.full((n, 3), 0.5) if forces else None,
        stress=np.eye(3) if stress else None,
        magmoms=np.full(n, 2.0) if magmoms else None,
    )


def test_every_label_field_is_registered_once():
    assert set(LABEL_FIELDS) == set(LabelBatch.__dataclass_fields__)


def test_missing_labels_are_masked_per_structure_and_atom():
    batch = collate_labels(
        [_labels(2), _labels(3, energy=None, magmoms=False, stress=False)], [2, 3]
    )
    assert batch.energy_mask.tolist() == [True, False]
    assert batch.stress_mask.tolist() == [True, False]
    assert batch.forces_mask.tolist() == [True] * 5
    assert batch.magmoms_mask.tolist() == [True, True, False, False, False]
    assert batch.forces.shape == (5, 3)
    assert batch.forces.dtype == torch.float32


def test_per_atom_label_of_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="structure 1: forces has shape"):
        collate_labels([_labels(2), _labels(4)], [2, 3])
