"""matgl's CHGNet and its own training step, for bench/bench_matgl.py (``pip install
fastchgnet[bench]``: matgl 4.1.2, pure PyTorch through torch-geometric; no DGL, no weights).

The model is matgl's ``CHGNet`` at the reference chgnet 0.3.0's sizes (``MATGL_SIZES``),
randomly initialised. The step is matgl's own: ``PotentialLightningModule.training_step``
(``Potential`` for forces and stress by autograd, then its ``loss_fn``: Huber, delta 0.1, on
energy per atom, forces, stress and |magmoms| with weights 1 / 1 / 0.1 / 0.1), then backward
and the Adam of its ``configure_optimizers``, zeroed by its ``optimizer_zero_grad``: what a
Lightning ``Trainer`` runs per batch, without the Trainer's logging. Graphs are built with
matgl's ``Structure2Graph`` and batched with its ``collate_fn_pes`` (its data loader's work,
outside any timing); its line graph is rebuilt inside the forward, so that is timed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

#: matgl CHGNet keyword arguments for chgnet 0.3.0's sizes: 64-d atom, bond and angle
#: features, 4 blocks, 31 radial bases (``max_n``) and 31 Fourier bases (``2 * max_f + 1``),
#: cutoffs 6 Å (atom graph) and 3 Å (bond graph), LayerNorm, readout MLP 64-64-64.
MATGL_SIZES = {
    "dim_atom_embedding": 64,
    "dim_bond_embedding": 64,
    "dim_angle_embedding": 64,
    "num_blocks": 4,
    "max_n": 31,
    "max_f": 15,
    "cutoff": 6.0,
    "threebody_cutoff": 3.0,
    "normalization": "layer",
    "atom_conv_hidden_dims": (64,),
    "bond_conv_hidden_dims": (64,),
    "final_hidden_dims": (64, 64, 64),
    "final_mlp_type": "mlp",
}
#: matgl's loss, as the issue asks: Huber with delta 0.1; weights e / f / s / m.
MATGL_LOSS = {
    "loss": "huber_loss",
    "loss_params": {"delta": 0.1},
    "energy_weight": 1.0,
    "force_weight": 1.0,
    "stress_weight": 0.1,
    "magmom_weight": 0.1,
}


def matgl_chgnet(seed: int = 0) -> torch.nn.Module:
    """matgl's CHGNet at ``MATGL_SIZES``, randomly initialised from ``seed``."""
    from matgl.models import CHGNet

    torch.manual_seed(seed)
    return CHGNet(**MATGL_SIZES)


def matgl_training_parts(lr: float = 3e-4, seed: int = 0) -> tuple[object, torch.optim.Optimizer]:
    """matgl's ``PotentialLightningModule`` around ``matgl_chgnet(seed)`` with ``MATGL_LOSS``,
    and the Adam its ``configure_optimizers`` builds (learning rate ``lr``)."""
    from matgl.utils.training import PotentialLightningModule

    module = PotentialLightningModule(model=matgl_chgnet(seed), lr=lr, **MATGL_LOSS)
    module.train()
    optimizers, _ = module.configure_optimizers()
    return module, optimizers[0]


def matgl_graphs(module: object, structures: Sequence) -> list[tuple]:
    """matgl's graph, lattice (1, 3, 3) Å and state of each structure (``Structure2Graph``
    with the model's element list and atom-graph cutoff)."""
    from matgl.ext.pymatgen import Structure2Graph

    chgnet = module.model.model
    converter = Structure2Graph(chgnet.element_types, cutoff=chgnet.cutoff)
    graphs = []
    for structure in structures:
        graph, lattice, state = converter.get_graph(structure)
        graphs.append((graph, lattice, torch.as_tensor(state)))
    return graphs


def matgl_batch(graphs: Sequence[tuple], labels: Sequence) -> tuple:
    """One batch as matgl's data loader yields it, from ``matgl_graphs`` items and labels with
    ``energy_per_atom`` (eV/atom; matgl's label is the total energy, eV), ``forces`` (n, 3)
    eV/Å, ``stress`` (3, 3) GPa and ``magmoms`` (n,) μB."""
    from matgl.graph.data import collate_fn_pes

    items = []
    for (graph, lattice, state), label in zip(graphs, labels, strict=True):
        n_atoms = len(label.forces)
        values = {
            "energies": label.energy_per_atom * n_atoms,
            "forces": label.forces,
            "stresses": label.stress,
            "magmoms": label.magmoms,
        }
        tensors = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in values.items()}
        items.append((graph, lattice, state, tensors))
    return collate_fn_pes(items, include_stress=True, include_magmom=True)


def matgl_step(module: object, optimizer: torch.optim.Optimizer, batch: tuple, index: int):
    """One optimiser update as a Lightning Trainer runs it for ``module``; returns the loss."""
    module.optimizer_zero_grad(0, index, optimizer)
    with warnings.catch_warnings():  # self.log without a Trainer: it warns and returns
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, index)["loss"]
    loss.backward()
    optimizer.step()
    return loss
