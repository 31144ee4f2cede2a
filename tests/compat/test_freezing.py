"""chgnet's fine-tuning recipe (freeze parts by the reference's attribute names, then
``Trainer.train``) runs on compat CHGNet, and the frozen parameters are not trained."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from fastchgnet.data.random_crystals import varied_structures

#: The layers chgnet's fine-tuning example freezes (examples/fine_tuning.ipynb).
RECIPE = (
    "atom_embedding",
    "bond_embedding",
    "angle_embedding",
    "bond_basis_expansion",
    "angle_basis_expansion",
    "atom_conv_layers",  # [:3] in the recipe
    "bond_conv_layers",
    "angle_layers",
)


def recipe_layers(chgnet) -> list[torch.nn.Module]:
    """The recipe's list, written as chgnet's example writes it."""
    return [
        chgnet.atom_embedding,
        chgnet.bond_embedding,
        chgnet.angle_embedding,
        chgnet.bond_basis_expansion,
        chgnet.angle_basis_expansion,
        chgnet.atom_conv_layers[:3],
        chgnet.bond_conv_layers,
        chgnet.angle_layers,
    ]


@pytest.fixture
def fresh_model():
    pytest.importorskip("chgnet")
    from fastchgnet.compat import CHGNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CHGNet.load(use_device="cpu", verbose=False)


def test_reference_module_names_hold_the_same_parameters(fresh_model, chgnet_ref):
    """Each name holds as many parameters as the reference's module of that name (ours,
    not copies), except bond_embedding: fused here with bond_weights_ag into one Linear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False)
    names = (*RECIPE, "site_wise", "readout_norm", "mlp", "composition_model", "bond_weights_bg")
    for name in names:
        ours = sum(p.numel() for p in getattr(fresh_model, name).parameters())
        theirs = sum(p.numel() for p in getattr(reference, name).parameters())
        if name == "bond_embedding":
            theirs += reference.bond_weights_ag.weight.numel()
        assert ours == theirs, name
    own = {id(p) for p in fresh_model.parameters()}
    assert all(id(p) in own for layer in recipe_layers(fresh_model) for p in layer.parameters())
    assert fresh_model.atom_conv_layers[:3][2] is fresh_model.atom_convs[2]


def test_reference_name_without_counterpart_says_what_to_use(fresh_model):
    with pytest.raises(AttributeError, match=r"'pooling'.*energy_readout"):
        _ = fresh_model.pooling
    with pytest.raises(AttributeError, match=r"energy_readout\.mlp"):
        fresh_model.mlp = torch.nn.Linear(64, 1)


def test_chgnet_freezing_recipe_keeps_frozen_parameters_bit_identical(fresh_model, tmp_path):
    from fastchgnet.compat import StructureData, Trainer, get_train_val_test_loader

    chgnet = fresh_model
    structures = varied_structures(8, seed=5, max_atoms=6)
    labels = chgnet.predict_structure(structures, task="ef")
    for layer in recipe_layers(chgnet):
        for param in layer.parameters():
            param.requires_grad = False
    frozen = {n: p.detach().clone() for n, p in chgnet.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in chgnet.named_parameters() if p.requires_grad}
    assert len(frozen) > 80
    assert trained

    random.seed(0)
    dataset = StructureData(
        structures=structures,
        energies=[float(p["e"]) + 0.05 for p in labels],
        forces=[p["f"] for p in labels],
    )
    loaders = get_train_val_test_loader(dataset, batch_size=4, train_ratio=0.5, val_ratio=0.25)
    trainer = Trainer(model=chgnet, targets="ef", learning_rate=1e-2, epochs=1, use_device="cpu")
    trainer.train(*loaders, save_dir=str(tmp_path))

    after = dict(chgnet.named_parameters())
    moved = [n for n in frozen if not torch.equal(frozen[n], after[n].detach())]
    assert moved == []
    assert not after["atom_convs.0.mlp_out.weight"].requires_grad  # flags kept in place
    assert any(not torch.equal(trained[n], after[n].detach()) for n in trained)
