"""predict compiled: one capacity (one compiled shape) for the whole list of structures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from fastchgnet import FastCHGNet
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.model.potential import predict_structures

#: fcc copper's one-atom cell: 12 neighbours 2.55 Å away, so 132 angles
COPPER = Structure(Lattice([[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]]), ["Cu"], [[0, 0, 0]])


def argon_grid() -> Structure:
    """27 Ar atoms 5 Å apart: many atoms, no bond-graph bond, no angle (cheap by atoms +
    bonds + angles, so sorted after one-atom Cu cells, yet more atoms than 16 of them)."""
    points = [[i / 3, j / 3, k / 3] for i, j, k in itertools.product(range(3), repeat=3)]
    return Structure(Lattice.cubic(15.0), ["Ar"] * 27, points)


@pytest.mark.usefixtures("one_thread")
def test_one_capacity_holds_every_batch_of_the_list_not_only_the_first():
    torch.manual_seed(0)
    model = FastCHGNet(n_conv=2).double()
    structures = [COPPER.copy() for _ in range(20)] + [argon_grid()]
    # eager: the padded programs without trace or compile; capacities are made as compiled
    potential = CompiledPotential(model, eager=True, store=None)
    padded = predict_structures(potential, structures, batch_size=16)
    assert len(potential.capacities) == 1  # the first batch (16 Cu) held 16 atoms, the 2nd 31
    assert potential.capacities[0].atoms >= 32
    assert potential.eager_calls == 0
    eager = predict_structures(model, structures, batch_size=16)
    for a, b in zip(eager, padded, strict=True):
        for key in ("e", "f", "s", "m"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-10)


def test_predict_compile_says_what_it_built_in_one_line(tmp_path, capsys, monkeypatch, model):
    import fastchgnet.compile.potential as compile_potential
    from fastchgnet.cli import main

    made = []

    def padded_without_a_compile(model):  # the padded programs, eager: no trace, no build
        made.append(CompiledPotential(model, eager=True, store=None))
        return made[-1]

    monkeypatch.setattr(compile_potential, "CompiledPotential", padded_without_a_compile)
    paths = []
    for k, structure in enumerate([COPPER, argon_grid()]):
        paths.append(str(tmp_path / f"s{k}.cif"))
        structure.to(filename=paths[-1])
    assert main(["predict", *paths, "--compile", "-o", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    waste = round(100 * made[0].padding.waste)
    assert err == (
        "fastchgnet predict: compiled (inductor): 0 graph(s) built in 0.0 s, 0 loaded from the "
        f"store; 1 shape(s); padding waste {waste} % over 1 batch(es)"
    )


def test_the_compile_line_names_a_capacity_grown_for_a_later_call():
    from fastchgnet.cli.commands import compile_summary
    from fastchgnet.model.potential import graphs_for

    model = FastCHGNet(n_conv=2)
    potential = CompiledPotential(model, eager=True, store=None)
    small, large = graphs_for(model.config, [COPPER, argon_grid()])
    potential.predict_graphs([small], stress=True)
    potential.predict_graphs([large], stress=True)  # not told beforehand: one more capacity
    assert "; 2 shape(s) (1 grown: a batch outgrew the first); " in compile_summary(potential)


def test_the_compile_line_counts_a_graph_loaded_from_the_store_as_loaded_not_built():
    from types import SimpleNamespace

    from fastchgnet.cli.commands import compile_summary
    from fastchgnet.data.capacity import Capacity, PaddingTally

    potential = SimpleNamespace(
        backend="inductor",
        capacities=[Capacity(16, 17, 768, 3072, 128)],
        graphs_built=0,  # built in this process: a loaded graph counts in graphs_loaded only
        graphs_loaded=1,
        compile_seconds=0.0,
        eager_calls=0,
        padding=PaddingTally(),
    )
    assert "compiled (inductor): 0 graph(s) built in 0.0 s, 1 loaded from the store; " in (
        compile_summary(potential)
    )


def test_a_long_list_is_not_padded_to_one_large_structure():
    """One shape for every batch pays a compile once, but pads each call to the largest
    counts: over many batches of small cells and one large cell that costs more than a second
    compile, so ``reserve`` leaves the large cell to its own (grown) capacity."""
    from fastchgnet import build_graph

    model = FastCHGNet(n_conv=2)
    small, large = build_graph(COPPER), build_graph(COPPER * (3, 3, 3))
    potential = CompiledPotential(model, eager=True, store=None)
    potential.reserve([[small] * 16] * 8 + [[large]])  # 9 batches, the large one 1.7x the rest
    assert potential.capacities == []  # the first call sizes its own, as before reserve
    potential.reserve([[small] * 16, [large]])  # two batches: one shape for both
    assert len(potential.capacities) == 1
