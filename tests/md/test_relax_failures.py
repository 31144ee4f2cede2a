"""A structure the model cannot take late in a relaxation: the run loses nothing finished.

It raised a bare StructureError and every structure relaxed before it was lost (a screen of
thousands of files, ended by one isolated atom). The error now carries the results so far and
the trajectory is written; with ``skip_failed`` the bad structure gets a RelaxResult with its
error and the others go on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

from fastchgnet.errors import StructureError
from fastchgnet.md.relax import relax


def _isolated() -> Atoms:
    return Atoms("Cu", cell=[9.0, 9.0, 9.0], pbc=True)  # no neighbour within 6 Å


@pytest.mark.parametrize("batched", [True, False])
def test_a_failure_late_in_the_run_carries_the_structures_finished(
    model, small_crystals, batched, tmp_path
):
    good = small_crystals[:2]
    path = tmp_path / "steps.extxyz"
    with pytest.raises(StructureError, match=r"structure 2 \(Cu\): 1 isolated atom") as caught:
        relax([*good, _isolated()], model, fmax=0.5, steps=5, batch_size=1, batched=batched,
              trajectory=path)  # fmt: skip
    kept = caught.value.results
    assert sorted(kept) == [0, 1]
    alone = relax(good, model, fmax=0.5, steps=5, batch_size=1, batched=batched)
    for index, result in enumerate(alone):
        assert kept[index].energy == pytest.approx(result.energy, abs=1e-6)
        assert kept[index].steps == result.steps
    written = read(path, ":")
    assert {frame.info["structure"] for frame in written} == {0, 1}


@pytest.mark.parametrize("batched", [True, False])
def test_skip_failed_gives_the_bad_structure_its_error_and_relaxes_the_rest(
    model, small_crystals, batched
):
    good = small_crystals[:3]
    inputs = [good[0], _isolated(), good[1], "not a structure", good[2]]
    with pytest.warns(UserWarning, match=r"structure 1 \(Cu\): 1 isolated atom.*not relaxed"):
        results = relax(inputs, model, fmax=0.5, steps=5, batch_size=2, batched=batched,
                        skip_failed=True)  # fmt: skip
    assert len(results) == 5
    failed = [r for r in results if r.error is not None]
    assert [results.index(r) for r in failed] == [1, 3]
    assert "isolated atom" in results[1].error
    assert "not a pymatgen" in results[3].error
    assert all(math.isnan(r.energy) and not r.converged for r in failed)
    assert len(results[1].atoms) == 1
    assert math.isnan(results[3].energy_per_atom)
    alone = relax(good, model, fmax=0.5, steps=5, batch_size=2, batched=batched)
    for result, expected in zip([results[0], results[2], results[4]], alone, strict=True):
        assert result.error is None
        assert result.energy == pytest.approx(expected.energy, abs=1e-5)
        np.testing.assert_allclose(result.atoms.positions, expected.atoms.positions, atol=1e-5)
