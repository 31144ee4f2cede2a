"""ModelConfig: the typed architecture and mode settings stored with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

ForceMode = Literal["conservative"]
Norm = Literal["layer"] | None


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CHGNet model. Defaults are the reference CHGNet 0.3.0 architecture.

    Lengths in Å. ``forces="conservative"``: forces are -dE/dx and stress the strain
    derivative of the energy (the reference). ``coupled_updates=True``: the reference order of
    updates inside an interaction block (atoms, then bonds from the new atoms, then angles).
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

    def __post_init__(self) -> None:
        if self.forces != "conservative":
            raise ValueError(f"forces={self.forces!r}: supported modes are 'conservative'")
        if self.num_angular % 2 != 1:
            raise ValueError(f"num_angular={self.num_angular} must be odd (1 + 2 * order)")
        if not 0 < self.bond_cutoff <= self.atom_cutoff:
            raise ValueError(
                f"need 0 < bond_cutoff <= atom_cutoff, got {self.bond_cutoff}, {self.atom_cutoff}"
            )
        if self.n_conv < 1:
            raise ValueError(f"n_conv={self.n_conv} must be at least 1")
        for name in ("gated_norm", "readout_norm"):
            if getattr(self, name) not in ("layer", None):
                raise ValueError(f"{name}={getattr(self, name)!r}: use 'layer' or None")
        object.__setattr__(self, "mlp_hidden_dims", tuple(self.mlp_hidden_dims))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly) of every setting."""
        data = asdict(self)
        data["mlp_hidden_dims"] = list(self.mlp_hidden_dims)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are an error (they would be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
