"""ModelConfig: the typed architecture and mode settings stored with every checkpoint."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from fastchgnet.data.field_types import coerce

ForceMode = Literal["conservative", "direct"]
StressHead = Literal["virial", "lattice"]
MagmomHead = Literal["auto", "linear", "mlp"]
Norm = Literal["layer"] | None


#: Sizes that must be at least 1 (widths, basis sizes, layers, elements, the cutoff exponent)
POSITIVE = (
    "atom_fea_dim",
    "bond_fea_dim",
    "angle_fea_dim",
    "num_radial",
    "num_angular",
    "n_conv",
    "atom_conv_hidden_dim",
    "bond_conv_hidden_dim",
    "cutoff_coeff",
    "max_num_elements",
)


def check_types(config: Any) -> None:
    """Check every field of the dataclass ``config`` against its annotation (``coerce``: one
    line naming the field; lists become tuples, ints floats where asked) and store the
    coerced values; the choices (Literal, or None) are left to their own checks."""
    hints = typing.get_type_hints(type(config))
    for field in fields(config):
        kind = hints[field.name]
        if typing.get_origin(kind) in (Literal, typing.Union, types.UnionType):
            continue
        value = coerce(kind, getattr(config, field.name), field.name)
        object.__setattr__(config, field.name, value)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CHGNet model. Defaults are the reference CHGNet 0.3.0 architecture.

    Lengths in Å. ``forces="conservative"``: forces are -dE/dx and stress the strain
    derivative of the energy (the reference). ``forces="direct"``: forces and stress come from
    the FastCHGNet heads (fastchgnet.model.direct_heads), no derivative of the energy;
    ``stress_head`` picks the stress head ("virial", the default: sound for any choice of unit
    cell; "lattice": the paper's lattice-normal head, which depends on the cell choice) and
    ``head_hidden_dims`` the hidden widths of the head MLPs. Both are used in direct mode only.
    ``coupled_updates=True``: the reference order of updates inside an interaction block
    (atoms, then bonds from the new atoms, then angles); ``False``: dependency elimination
    (paper eq. 11), bond and angle updates read the block's input features.
    ``magmom_head`` reads the atom features before the last atom conv: "linear" is the
    reference's |linear(a)|, "mlp" FastCHGNet's |MLP(norm(a))| (``head_hidden_dims`` wide);
    "auto" (the default) is "mlp" in direct mode and "linear" in conservative mode. At the
    reference architecture on 1,000 varied crystals the MLP head cut the direct model's test
    magmom MAE by a third (README, "Model modes"); the reference weights need "linear".
    ``head_feature_grad`` (direct mode): the factor on the gradient that the force and stress
    heads' losses send back into the shared atom and bond features (the heads' own weights get
    it whole; 1: plain backpropagation). Below 1 the backbone leans towards the energy: at
    the reference architecture (issue #17's set) two-layer heads with 0.5 brought the direct
    model's test energy MAE level with the conservative model's (README, "Model modes").
    """

    atom_fea_dim: int = 64
    bond_fea_dim: int = 64
    angle_fea_dim: int = 64
    num_radial: int = 31
    num_angular: int = 31
    n_conv: int = 4
    atom_conv_hidden_dim: int = 64
    bond_conv_hidden_dim: int = 64
    angle_hidden_dim: int = 0
    mlp_hidden_dims: tuple[int, ...] = (64, 64, 64)
    atom_cutoff: float = 6.0
    bond_cutoff: float = 3.0
    cutoff_coeff: int = 8
    learnable_rbf: bool = True
    gated_norm: Norm = "layer"
    readout_norm: Norm = "layer"
    mlp_out_bias: bool = False
    max_num_elements: int = 94
    forces: ForceMode = "conservative"
    coupled_updates: bool = True
    stress_head: StressHead = "virial"
    head_hidden_dims: tuple[int, ...] = (64, 64)
    magmom_head: MagmomHead = "auto"
    head_feature_grad: float = 0.5

    def __post_init__(self) -> None:
        check_types(self)
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be at least 1")
        if self.angle_hidden_dim < 0:
            raise ValueError(f"angle_hidden_dim={self.angle_hidden_dim}: must be >= 0")
        for name in ("mlp_hidden_dims", "head_hidden_dims"):
            if any(width < 1 for width in getattr(self, name)):
                raise ValueError(f"{name}={list(getattr(self, name))}: widths must be at least 1")
        if self.forces not in ("conservative", "direct"):
            raise ValueError(f"forces={self.forces!r}: use 'conservative' or 'direct'")
        if self.stress_head not in ("virial", "lattice"):
            raise ValueError(f"stress_head={self.stress_head!r}: use 'virial' or 'lattice'")
        if self.forces == "conservative" and self.stress_head != "virial":
            raise ValueError(
                f"stress_head={self.stress_head!r} needs forces='direct': conservative stress is "
                "the strain derivative of the energy"
            )
        if self.magmom_head not in ("auto", "linear", "mlp"):
            raise ValueError(f"magmom_head={self.magmom_head!r}: use 'auto', 'linear' or 'mlp'")
        if self.magmom_head == "auto":
            head = "mlp" if self.forces == "direct" else "linear"
            object.__setattr__(self, "magmom_head", head)
        if not 0.0 <= self.head_feature_grad <= 1.0:
            raise ValueError(f"head_feature_grad={self.head_feature_grad}: must be in [0, 1]")
        if self.num_angular % 2 != 1:
            raise ValueError(f"num_angular={self.num_angular} must be odd (1 + 2 * order)")
        if not 0 < self.bond_cutoff <= self.atom_cutoff:
            raise ValueError(
                f"need 0 < bond_cutoff <= atom_cutoff, got {self.bond_cutoff}, {self.atom_cutoff}"
            )
        for name in ("gated_norm", "readout_norm"):
            if getattr(self, name) not in ("layer", None):
                raise ValueError(f"{name}={getattr(self, name)!r}: use 'layer' or None")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly) of every setting."""
        data = asdict(self)
        data["mlp_hidden_dims"] = list(self.mlp_hidden_dims)
        data["head_hidden_dims"] = list(self.head_hidden_dims)
        return data

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a checkpoint's stored settings: files written before ``magmom_head`` and
        ``head_feature_grad`` existed hold the reference's linear magmom head, whatever their
        mode, and were trained with plain backpropagation into the features."""
        return cls.from_dict({"magmom_head": "linear", "head_feature_grad": 1.0, **data})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are an error (they would be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
