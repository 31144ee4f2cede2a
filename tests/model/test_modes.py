"""Model modes: construction, parameter counts, direct mode without autograd, dependency
elimination (paper eq. 11), refusal of reference weights in other modes, predict, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from fastchgnet import FastCHGNet, ModelConfig, build_graph, collate
from fastchgnet.testing import predict, random_crystal, randomize_model, single_threaded

MODES = [
    pytest.param({}, id="conservative-coupled"),
    pytest.param({"coupled_updates": False}, id="conservative-decoupled"),
    pytest.param({"forces": "direct"}, id="direct-coupled"),
    pytest.param({"forces": "direct", "coupled_updates": False}, id="direct-decoupled"),
    pytest.param({"forces": "direct", "stress_head": "lattice"}, id="direct-lattice"),
]
#: n_params per mode (the 94 fixed composition energies included, as the reference counts)
PARAMETER_COUNTS = {
    "conservative": 412_525,  # = reference CHGNet 0.3.0
    # + two pair heads of 12_737 each, and the MLP magmom head (8_513) for the linear one (65)
    "direct-virial": 446_447,
    "direct-lattice": 442_548,  # + pair force head 12_737 + lattice stress head 8_838 + 8_448
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_threaded():
        yield


def small_batch(dtype: torch.dtype = torch.float32):
    crystals = [random_crystal(seed, n) for seed, n in ((1, 2), (2, 4))]
    return collate([build_graph(c) for c in crystals], dtype=dtype)


def test_default_model_is_the_reference_architecture():
    config = FastCHGNet().config
    assert config == ModelConfig()
    assert (config.forces, config.coupled_updates) == ("conservative", True)
    assert FastCHGNet().n_params == PARAMETER_COUNTS["conservative"]


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        ({}, PARAMETER_COUNTS["conservative"]),
        ({"coupled_updates": False}, PARAMETER_COUNTS["conservative"]),
        ({"forces": "direct"}, PARAMETER_COUNTS["direct-virial"]),
        ({"forces": "direct", "coupled_updates": False}, PARAMETER_COUNTS["direct-virial"]),
        ({"forces": "direct", "stress_head": "lattice"}, PARAMETER_COUNTS["direct-lattice"]),
    ],
)
def test_repr_prints_mode_and_parameter_count(kwargs, count):
    model = FastCHGNet(**kwargs)
    assert model.n_params == count
    assert f"n_params={count:,}" in repr(model)
    assert f"coupled_updates={kwargs.get('coupled_updates', True)}" in repr(model)


def test_modes_share_the_backbone_parameter_names():
    backbone = set(FastCHGNet().state_dict())
    assert set(FastCHGNet(coupled_updates=False).state_dict()) == backbone
    direct = set(FastCHGNet(forces="direct").state_dict())
    magmom = {"magmom_readout.linear.weight", "magmom_readout.linear.bias"}
    assert backbone - magmom < direct
    assert all(name.startswith(("direct_heads.", "magmom_readout.")) for name in direct - backbone)
    assert set(FastCHGNet(forces="direct", magmom_head="linear").state_dict()) > backbone


@pytest.mark.parametrize(
    "kwargs",
    [{"forces": "magic"}, {"stress_head": "lattice"}, {"forces": "direct", "stress_head": "x"}],
)
def test_config_rejects_unknown_modes_and_lattice_stress_without_direct_forces(kwargs):
    with pytest.raises(ValueError, match=r"forces|stress_head"):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("coupled", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_direct_forward_never_calls_autograd_grad(monkeypatch, coupled, training):
    def forbidden(*args, **kwargs):
        raise AssertionError("direct mode called torch.autograd.grad")

    model = FastCHGNet(forces="direct", coupled_updates=coupled).train(training)
    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    prediction = model(small_batch())
    assert prediction.forces is not None
    assert prediction.stress is not None


def test_direct_training_step_is_one_first_order_backward():
    """Energy, forces, stress and magmom losses back-propagate to every trainable parameter
    with one ordinary backward: no second derivative, no graph over positions."""
    model = randomize_model(FastCHGNet(forces="direct"), seed=0).train()
    batch = small_batch()
    prediction = model(batch)
    loss = (
        prediction.energy.square().sum()
        + prediction.forces.square().sum()
        + prediction.stress.square().sum()
        + prediction.magmoms.square().sum()
    )
    loss.backward()
    missing = {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}
    # as in the reference, the last block's angle update feeds nothing (no bond conv follows)
    last_angle_update = f"angle_updates.{model.config.n_conv - 2}."
    assert missing == {name for name in model.state_dict() if name.startswith(last_angle_update)}


def test_direct_mode_predicts_under_no_grad_and_skips_unrequested_outputs():
    model = FastCHGNet(forces="direct").eval()
    with torch.no_grad():
        full = model(small_batch())
        bare = model(small_batch(), compute_forces=False, compute_stress=False)
    assert full.forces.shape == (6, 3)
    assert full.stress.shape == (2, 3, 3)
    assert bare.forces is None
    assert bare.stress is None
    assert torch.equal(full.energy, bare.energy)


@pytest.mark.parametrize("kwargs", MODES)
def test_predict_structure_works_in_every_mode(kwargs):
    model = FastCHGNet(**kwargs)
    crystals = [random_crystal(3, 5), bulk("Cu", "fcc", a=3.6)]
    results = model.predict_structure(crystals)
    assert [r["f"].shape for r in results] == [(5, 3), (1, 3)]
    assert all(r["s"].shape == (3, 3) and r["m"].shape == r["f"].shape[:1] for r in results)
    assert all(np.isfinite(r["e"]) for r in results)


@pytest.mark.parametrize("kwargs", MODES)
def test_save_and_load_keep_the_mode_and_predictions(kwargs, tmp_path):
    model = randomize_model(FastCHGNet(**kwargs), seed=1)
    model.save(tmp_path / "model.pt")
    loaded = FastCHGNet.load(tmp_path / "model.pt")
    assert loaded.config == model.config
    crystal = [random_crystal(4, 3)]
    before, after = predict(model, crystal)[0], predict(loaded, crystal)[0]
    for key in "efsm":
        np.testing.assert_array_equal(before[key], after[key])


def test_a_float64_model_saved_loads_float64_to_the_bit(tmp_path):
    model = randomize_model(FastCHGNet().double(), seed=2)  # float64 draws: not float32 values
    assert any(not torch.equal(p, p.float().double()) for p in model.parameters())
    model.save(tmp_path / "model.pt")
    loaded = FastCHGNet.load(tmp_path / "model.pt")
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    saved, kept = model.state_dict(), loaded.state_dict()
    assert saved.keys() == kept.keys()
    for name, value in saved.items():
        assert kept[name].dtype == value.dtype, name
        assert torch.equal(kept[name], value), name
    crystal = [random_crystal(4, 3)]
    before, after = predict(model, crystal)[0], predict(loaded, crystal)[0]
    assert before["e"].dtype == after["e"].dtype == np.float64
    np.testing.assert_array_equal(after["e"], before["e"])


@pytest.mark.parametrize(
    "modes",
    [
        {"forces": "direct"},
        {"coupled_updates": False},
        {"forces": "direct", "coupled_updates": False},
    ],
)
def test_reference_weights_refuse_any_other_mode(modes):
    with pytest.raises(ValueError, match="trained with forces='conservative'"):
        FastCHGNet.from_reference("0.3.0", **modes)


def test_reference_weights_load_when_the_mode_is_restated():
    pytest.importorskip("chgnet")
    model = FastCHGNet.from_reference("0.3.0", forces="conservative", coupled_updates=True)
    assert model.config == FastCHGNet.from_reference("0.3.0").config


def block_outputs(model: FastCHGNet, batch, replace: str | None) -> dict[str, torch.Tensor]:
    """Outputs of the first block's bond conv and angle update; ``replace`` names a layer of
    that block whose output is swapped for noise (what must not matter is then visible)."""
    outputs: dict[str, torch.Tensor] = {}
    layers = {
        "atom_conv": model.atom_convs[0],
        "bond_conv": model.bond_convs[0],
        "angle_update": model.angle_updates[0],
    }
    handles = []
    for name, layer in layers.items():

        def hook(module, args, output, name=name):
            if name == replace:
                output = torch.randn_like(output)
            outputs[name] = output
            return output

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(batch, compute_forces=False, compute_stress=False)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "decoupled"])
def test_decoupled_bond_and_angle_updates_read_the_block_inputs(coupled):
    """Paper eq. 11: with dependency elimination, bond conv and angle update of a block read
    the block's input atoms, bonds and angles, so neither the new atoms nor the new bonds
    change them; in the reference order both do."""
    torch.manual_seed(0)
    model = randomize_model(FastCHGNet(coupled_updates=coupled), seed=2).eval()
    batch = small_batch()
    plain = block_outputs(model, batch, None)
    new_atoms = block_outputs(model, batch, "atom_conv")
    new_bonds = block_outputs(model, batch, "bond_conv")
    independent = [
        torch.equal(plain["bond_conv"], new_atoms["bond_conv"]),
        torch.equal(plain["angle_update"], new_atoms["angle_update"]),
        torch.equal(plain["angle_update"], new_bonds["angle_update"]),
    ]
    assert independent == [not coupled] * 3


def test_magmom_head_follows_the_mode_unless_named():
    assert ModelConfig().magmom_head == "linear"
    assert ModelConfig(forces="direct").magmom_head == "mlp"
    assert ModelConfig(forces="direct", magmom_head="linear").magmom_head == "linear"
    assert ModelConfig(magmom_head="mlp").magmom_head == "mlp"
    with pytest.raises(ValueError, match="magmom_head='deep'"):
        ModelConfig(magmom_head="deep")
    linear = FastCHGNet(forces="direct", magmom_head="linear").magmom_readout
    mlp = FastCHGNet(forces="direct").magmom_readout
    assert hasattr(linear, "linear")
    assert not hasattr(linear, "mlp")
    assert hasattr(mlp, "mlp")
    assert not hasattr(mlp, "linear")


def test_mlp_magmom_head_reads_the_features_before_the_last_conv():
    """Changing the last atom conv changes energy but not the magmoms."""
    model = randomize_model(FastCHGNet(forces="direct"), seed=2).eval()
    batch = small_batch()
    before = model(batch)
    with torch.no_grad():
        for p in model.atom_convs[-1].parameters():
            p.add_(0.1)
    after = model(batch)
    torch.testing.assert_close(after.magmoms, before.magmoms, rtol=0, atol=0)
    assert not torch.allclose(after.energy, before.energy)
    assert (before.magmoms >= 0).all()


def test_a_model_file_from_before_the_magmom_head_setting_loads_with_the_linear_head(tmp_path):
    from fastchgnet.files import write_checksummed
    from fastchgnet.model.io import FORMAT, FORMAT_VERSION

    model = randomize_model(FastCHGNet(forces="direct", magmom_head="linear"), seed=3)
    config = model.config.to_dict()
    del config["magmom_head"]  # as files written before these settings existed
    del config["head_feature_grad"]
    state = {k: v.detach() for k, v in model.state_dict().items()}
    write_checksummed(
        tmp_path / "old.pt", {"config": config, "weights": state}, FORMAT, FORMAT_VERSION
    )
    loaded = FastCHGNet.load(tmp_path / "old.pt")
    assert loaded.config.magmom_head == "linear"
    assert loaded.config.head_feature_grad == 1.0
    crystal = [random_crystal(4, 3)]
    np.testing.assert_array_equal(predict(model, crystal)[0]["m"], predict(loaded, crystal)[0]["m"])


def test_head_feature_grad_scales_only_what_the_heads_send_into_the_backbone():
    batch = small_batch(torch.float64)
    plain = randomize_model(FastCHGNet(forces="direct", head_feature_grad=1.0), seed=4).double()
    half = FastCHGNet(forces="direct", head_feature_grad=0.5).double()
    half.load_state_dict(plain.state_dict())
    grads, outputs = [], []
    for model in (plain, half):
        model.zero_grad()
        out = model(batch)
        (out.forces.square().sum() + out.stress.square().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        outputs.append(out)
    for key in ("forces", "stress", "energy"):  # the forward pass is unchanged
        torch.testing.assert_close(
            getattr(outputs[1], key), getattr(outputs[0], key), rtol=0, atol=0
        )
    (g1, g_half) = grads
    assert set(g1) == set(g_half)
    heads = [n for n in g1 if n.startswith("direct_heads.")]
    backbone = [n for n in g1 if n.startswith(("atom_convs.", "bond_convs.", "atom_embedding"))]
    assert heads
    assert backbone
    for name in heads:
        torch.testing.assert_close(g_half[name], g1[name])
    for name in backbone:
        torch.testing.assert_close(g_half[name], 0.5 * g1[name])
    with pytest.raises(ValueError, match=r"head_feature_grad=1\.5"):
        ModelConfig(forces="direct", head_feature_grad=1.5)
