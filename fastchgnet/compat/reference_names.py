"""chgnet's module attribute names on our model: ``chgnet.bond_embedding``,
``chgnet.atom_conv_layers[:3]``, ... are our modules (no copies), so chgnet's recipes (freezing
parts for fine-tuning) run unchanged. ``atom_embedding`` and ``angle_embedding`` are ours
already, under the same names. An attribute with no counterpart here is an AttributeError
saying what to use instead.
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: The reference CHGNet's module attributes that ``CHGNet`` answers (properties) -> ours.
REFERENCE_MODULES = {
    "bond_embedding": "bond_projection",
    "bond_weights_ag": "bond_projection",
    "bond_weights_bg": "bond_graph_weights",
    "bond_basis_expansion": "radial_atom and radial_bond",
    "angle_basis_expansion": "angle_basis",
    "atom_conv_layers": "atom_convs",
    "bond_conv_layers": "bond_convs",
    "angle_layers": "angle_updates",
    "site_wise": "magmom_readout.linear",
    "readout_norm": "energy_readout.norm",
    "mlp": "energy_readout.mlp",
    "composition_model": "composition",
}
#: Reference CHGNet attributes with no module here -> what to use instead.
NO_COUNTERPART = {
    "pooling": "the energy readout sums the site energies itself (no parameters): see "
    "energy_readout",
    "site_wise": "this model's magnetic-moment head is an MLP (ModelConfig.magmom_head): use "
    "magmom_readout",
}


class ReferenceNames:
    """Mixin for a ``FastCHGNet``: the reference CHGNet's module attributes, as properties
    returning our modules. Setting one is an error (nn.Module would register a new module)."""

    @property
    def bond_embedding(self) -> nn.Linear:
        """chgnet's ``bond_embedding`` and ``bond_weights_ag`` are one Linear here
        (``bond_projection``: rows ``:bond_fea_dim`` embed, the rest weigh): freezing either
        freezes both."""
        return self.bond_projection

    @property
    def bond_weights_ag(self) -> nn.Linear:
        """``bond_projection``, shared with ``bond_embedding`` (see there)."""
        return self.bond_projection

    @property
    def bond_weights_bg(self) -> nn.Linear:
        """The bond-graph weights, ``bond_graph_weights``."""
        return self.bond_graph_weights

    @property
    def bond_basis_expansion(self) -> nn.ModuleDict:
        """Both radial bases (``radial_atom``, ``radial_bond``) under chgnet's names
        ``rbf_expansion_ag`` and ``rbf_expansion_bg``."""
        return nn.ModuleDict(
            {"rbf_expansion_ag": self.radial_atom, "rbf_expansion_bg": self.radial_bond}
        )

    @property
    def angle_basis_expansion(self) -> nn.Module:
        """The angle (Fourier) basis, ``angle_basis``."""
        return self.angle_basis

    @property
    def atom_conv_layers(self) -> nn.ModuleList:
        """The atom convolutions, ``atom_convs`` (slices are ModuleLists)."""
        return self.atom_convs

    @property
    def bond_conv_layers(self) -> nn.ModuleList:
        """The bond convolutions, ``bond_convs``."""
        return self.bond_convs

    @property
    def angle_layers(self) -> nn.ModuleList:
        """The angle updates, ``angle_updates``."""
        return self.angle_updates

    @property
    def site_wise(self) -> nn.Linear:
        """The linear magnetic-moment head, ``magmom_readout.linear``."""
        if self.config.magmom_head != "linear":
            raise AttributeError("site_wise")  # __getattr__ says why (NO_COUNTERPART)
        return self.magmom_readout.linear

    @property
    def readout_norm(self) -> nn.Module:
        """The norm before the energy MLP, ``energy_readout.norm``."""
        return self.energy_readout.norm

    @property
    def mlp(self) -> nn.Module:
        """The site-energy MLP, ``energy_readout.mlp``."""
        return self.energy_readout.mlp

    @property
    def composition_model(self) -> nn.Module:
        """The AtomRef element energies, ``composition``."""
        return self.composition

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in NO_COUNTERPART:
                raise AttributeError(
                    f"fastchgnet.compat CHGNet has no chgnet {name!r}: {NO_COUNTERPART[name]}"
                ) from None
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        if name in REFERENCE_MODULES:
            raise AttributeError(
                f"CHGNet.{name} is chgnet's name for our {REFERENCE_MODULES[name]}: set "
                f"{REFERENCE_MODULES[name]} instead"
            )
        super().__setattr__(name, value)
