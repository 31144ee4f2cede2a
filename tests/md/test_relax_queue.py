"""Relaxation from a queue: structures are taken lazily as slots free up, every model call
stays full while input remains, results come back in input order, a bad input is named."""

from __future__ import annotations

import numpy as np
import pytest

from fastchgnet.errors import StructureError
from fastchgnet.md.relax import relax
from tests.md.conftest import CountingPotential


def test_queue_keeps_calls_full_and_reads_input_lazily(model, small_crystals):
    crystals = small_crystals[:5]
    pulled: list[int] = []

    def source():
        for index, atoms in enumerate(crystals):
            pulled.append(index)
            yield atoms

    pulled_at_call: list[int] = []

    class Watching(CountingPotential):
        def predict_graphs(self, graphs, **kwargs):
            pulled_at_call.append(len(pulled))
            return super().predict_graphs(graphs, **kwargs)

    counted = Watching(model)
    results = relax(source(), counted, fmax=0.5, steps=8, batch_size=2)
    assert pulled_at_call[0] == 2  # a generator is read only as slots free up
    sizes = counted.sizes
    assert max(sizes) == 2
    # full calls until the input runs dry, then the last structures finish alone
    assert sizes == sorted(sizes, reverse=True)
    partial = [n for n, size in zip(pulled_at_call, sizes, strict=True) if size < 2]
    assert set(partial) == {len(crystals)}  # some, all after the input ran dry
    assert sum(sizes) == sum(r.steps + 1 for r in results)  # each step one evaluation
    assert len(set(pulled_at_call)) > 2  # structures were pulled in between calls


def test_queue_returns_results_in_input_order(model, small_crystals):
    crystals = small_crystals[:5]
    queued = relax(iter(crystals), model, fmax=0.5, steps=12, batch_size=2)
    together = relax(crystals, model, fmax=0.5, steps=12, batch_size=len(crystals))
    assert isinstance(queued, list)
    assert len({r.steps for r in queued}) > 1  # they finished at different steps
    for atoms, a, b in zip(crystals, queued, together, strict=True):
        assert a.atoms.get_chemical_formula() == atoms.get_chemical_formula()
        assert a.steps == b.steps
        assert a.energy == pytest.approx(b.energy, abs=1e-4)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-4)


def test_bad_structure_in_the_queue_is_named(model, small_crystals):
    isolated = small_crystals[1].copy()
    isolated.set_cell(isolated.cell * 4, scale_atoms=True)  # no neighbour within 6 Å
    queue = iter([small_crystals[2], small_crystals[3], isolated])
    with pytest.raises(StructureError, match=r"structure 2 .*isolated"):
        relax(queue, model, steps=3, batch_size=2)
    with pytest.raises(StructureError, match=r"structure 1 \(str\): is not a pymatgen"):
        relax(iter([small_crystals[2], "POSCAR"]), model, steps=3)
    with pytest.raises(TypeError, match="read files first"):
        relax("POSCAR", model)
