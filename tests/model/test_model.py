"""Model basics: batching, factored layers, save/load, reference import, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from fastchgnet import FastCHGNet, ModelConfig, StructureError, build_graph, collate
from fastchgnet.data.random_crystals import no_angle_structure, varied_structures
from fastchgnet.model.layers import AtomConv, BondConv, Topology, angle_weights, scatter_sum

STRUCTURES = varied_structures(6, seed=5, max_atoms=24)


def test_batch_prediction_equals_single_predictions(model):
    together = model.predict_structure(STRUCTURES, batch_size=16)
    for structure, joint in zip(STRUCTURES, together, strict=True):
        alone = model.predict_structure(structure)
        np.testing.assert_allclose(joint["e"], alone["e"], atol=2e-6)
        np.testing.assert_allclose(joint["f"], alone["f"], atol=2e-5)
        np.testing.assert_allclose(joint["s"], alone["s"], atol=2e-4)
        np.testing.assert_allclose(joint["m"], alone["m"], atol=2e-6)


def test_prediction_shapes_and_units_as_reference(model):
    out = model.predict_structure(STRUCTURES[:2])
    for structure, item in zip(STRUCTURES[:2], out, strict=True):
        n = len(structure)
        assert np.shape(item["e"]) == ()
        assert item["f"].shape == (n, 3)
        assert item["s"].shape == (3, 3)
        assert item["m"].shape == (n,)
        assert (item["m"] >= 0).all()


def test_structure_without_angles_predicts_finite_values(model):
    out = model.predict_structure(no_angle_structure())
    assert all(np.isfinite(v).all() for v in out.values())


def test_a_structure_without_any_bond_predicts_its_atoms_alone(model):
    """Two Li atoms 7 Å apart (past the 6 Å cutoff): what the reference's calculator predicts
    with on_isolated_atoms="warn". Every layer saw zero bonds, where a view's -1 beside the 0
    raised "cannot reshape tensor of 0 elements"."""
    pair = Structure(Lattice.cubic(20.0), ["Li", "Li"], [[0, 0, 0], [0.35, 0, 0]])
    single = Structure(Lattice.cubic(20.0), ["Li"], [[0, 0, 0]])
    graphs = [build_graph(s, allow_isolated=True) for s in (pair, single)]
    assert graphs[0].n_bonds == 0
    out = model(collate(graphs), compute_forces=True, compute_stress=True)
    assert torch.isfinite(out.energy).all()
    torch.testing.assert_close(out.energy[0], out.energy[1])  # eV/atom: atoms alone
    assert out.forces.abs().max() == 0


def test_factored_atom_conv_equals_concatenated_gated_mlp():
    torch.manual_seed(0)
    graph = build_graph(STRUCTURES[2])
    batch = collate([graph], dtype=torch.float64)
    conv = AtomConv(8, 6, 5, "layer", bias=False).double()
    atoms = torch.randn(graph.n_atoms, 8, dtype=torch.float64)
    bonds = torch.randn(graph.n_bonds, 6, dtype=torch.float64)
    weights = torch.randn(graph.n_bonds, 8, dtype=torch.float64)
    topo = Topology.of(batch)
    got = conv(atoms, bonds, weights, topo)
    edge_bonds = bonds[topo.edge_bond]
    x = torch.cat([atoms[topo.edge_centre], edge_bonds, atoms[topo.edge_neighbour]], dim=1)
    messages = conv.gated(x) * weights[topo.edge_bond]
    expected = atoms + conv.mlp_out(scatter_sum(messages, topo.edge_centre, graph.n_atoms))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_factored_bond_conv_equals_concatenated_gated_mlp():
    torch.manual_seed(1)
    graph = build_graph(STRUCTURES[3])
    batch = collate([graph], dtype=torch.float64)
    conv = BondConv(8, 6, 4, 5, "layer", bias=True).double()
    n_short = graph.n_short_bonds
    atoms = torch.randn(graph.n_atoms, 8, dtype=torch.float64)
    bonds = torch.randn(graph.n_bonds, 6, dtype=torch.float64)
    weights = torch.randn(n_short, 6, dtype=torch.float64)
    angles = torch.randn(graph.n_angles, 4, dtype=torch.float64)
    topo = Topology.of(batch)
    got = conv(atoms, bonds, angle_weights(weights, topo), angles, topo)
    centre = topo.edge_centre[batch.angle_edges[:, 0]]  # the atom shared by the two bonds
    x = torch.cat([bonds[topo.angle_bond1], bonds[topo.angle_bond2], angles, atoms[centre]], dim=1)
    update = conv.gated(x) * weights[topo.angle_bond1] * weights[topo.angle_bond2]
    # every bond gets W_out(sum of its angle messages); bonds outside the bond graph an empty sum
    summed = scatter_sum(update, topo.angle_bond1, graph.n_bonds)
    expected = bonds + conv.mlp_out(summed)
    assert 0 < n_short < graph.n_bonds
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_reference_import_has_reference_parameter_count(model):
    assert model.n_params == 412_525
    assert "n_params=412,525" in repr(model)


def test_damaged_model_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "model.pt"
    FastCHGNet(n_conv=2).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(path)):
        FastCHGNet.load(path)


def test_flipped_bit_in_the_stored_weights_reaches_the_checksum(tmp_path):
    """One bit flipped inside the stored payload (not the container) must be caught by the
    checksum, not by torch.load or by loading a damaged state dict."""
    path = tmp_path / "model.pt"
    FastCHGNet(n_conv=2).save(path)
    data = bytearray(path.read_bytes())
    body = torch.load(path, weights_only=True)["body"].numpy().tobytes()
    piece = body[len(body) // 2 : len(body) // 2 + 64]
    assert data.count(piece) == 1, "the payload is not stored verbatim in the model file"
    data[data.index(piece)] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: checksum mismatch")):
        FastCHGNet.load(path)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown model config key"):
        FastCHGNet(atom_fea_dimm=32)
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_unknown_reference_version_is_rejected():
    with pytest.raises(ValueError, match="unknown reference version"):
        FastCHGNet.from_reference("9.9.9")


def test_element_without_embedding_names_the_structure(model):
    heavy = Structure(Lattice.cubic(3.0), ["Am"], [[0, 0, 0]])  # Z = 95
    with pytest.raises(StructureError, match=r"structure 1 \(Am\): element\(s\) Am \(Z=95\)"):
        model.predict_structure([STRUCTURES[0], heavy])


def test_failing_structure_in_a_list_is_named_by_position(model):
    lonely = Structure(Lattice.cubic(15.0), ["Li"], [[0, 0, 0]])
    with pytest.raises(StructureError, match=r"structure 2 \(Li\).*isolated"):
        model.predict_structure([STRUCTURES[0], STRUCTURES[1], lonely])


def test_predict_restores_training_mode(model):
    model.train()
    model.predict_structure(STRUCTURES[0])
    assert model.training
    model.eval()


def test_predict_in_eval_mode_does_not_walk_the_modules(model, monkeypatch):
    """An eval-mode model is predicted as it is: ``Module.train`` walks every submodule (about
    2 ms, a tenth of an 8-atom MD step), so it must not run per call."""
    model.eval()
    calls = []
    monkeypatch.setattr(type(model), "train", lambda self, mode=True: calls.append(mode) or self)
    model.predict_structure(STRUCTURES[0])
    assert calls == []
    assert not model.training


def test_loaded_model_is_ready_to_predict(model, tmp_path):
    model.train()
    path = tmp_path / "m.pt"
    model.save(path)
    model.eval()
    assert not type(model).load(path).training


def test_loading_a_missing_model_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nofile\.pt: no such model file"):
        FastCHGNet.load(tmp_path / "nofile.pt")
    with pytest.raises(IsADirectoryError, match=r"a folder, not a model file"):
        FastCHGNet.load(tmp_path)


def test_loading_a_bare_state_dict_names_it(tmp_path):
    """It was told 'a chgnet checkpoint or as_dict file loads with load_model_file', which
    refuses it too: a state dict has no settings to build the model from."""
    torch.save(FastCHGNet(n_conv=2).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"it is a state dict \(\d+ tensors, no model settings\)"):
        FastCHGNet.load(tmp_path / "weights.pt")


@pytest.mark.parametrize("cap", [1, 4, 8])
def test_random_crystals_hold_at_most_max_atoms(cap):
    # fluorite (12 sites), rocksalt (8) and the others were drawn whatever the cap: `data synth
    # --max-atoms 8` wrote crystals of 12 atoms
    import numpy as np

    from fastchgnet.data.random_crystals import random_structure

    rng = np.random.default_rng(1)
    sizes = [len(random_structure(rng, max_atoms=cap)) for _ in range(40)]
    assert max(sizes) <= cap
    assert cap == 1 or max(sizes) > 1  # the cap is a cap, not a size


#: ``random_structure``'s draws before the cap held (seed 3 at its default 64 atoms, then seed 5
#: at 16)
EXPECTED_LABELS = [
    "wurtzite-36", "fluorite-12", "wurtzite-16", "rutile-12", "cscl-8", "fluorite-12",
    "rocksalt-16",
]  # fmt: skip


def test_random_crystals_from_12_atoms_up_are_drawn_as_before():
    # the bundled quick-start set (--max-atoms 16) and every seeded benchmark keep their data
    import numpy as np

    from fastchgnet.data.random_crystals import random_structure

    labels = [random_structure(np.random.default_rng(3)).properties["label"] for _ in range(1)]
    rng = np.random.default_rng(5)
    labels += [random_structure(rng, max_atoms=16).properties["label"] for _ in range(6)]
    assert labels == EXPECTED_LABELS
