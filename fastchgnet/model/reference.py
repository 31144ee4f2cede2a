"""Import the pretrained weights that ship inside the reference ``chgnet`` package.

Only the checkpoint file is read (with torch.load); no reference code runs. Parameter names
and layouts are mapped to ours: the core and gate first layers of every GatedMLP are stacked,
and the bond embedding and atom-graph bond weights are stacked (they read the same basis).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fastchgnet.model.config import ModelConfig
from fastchgnet.model.io import check_weights_fit

if TYPE_CHECKING:
    from fastchgnet.model.chgnet import FastCHGNet

#: version -> checkpoint path inside the installed chgnet package
CHECKPOINTS = {
    "0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
    "0.2.0": "pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
    "r2scan": "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
}


def checkpoint_path(version: str) -> Path:
    """Path of the reference checkpoint file for ``version`` in the installed chgnet."""
    if version not in CHECKPOINTS:
        raise ValueError(f"unknown reference version {version!r}; known: {sorted(CHECKPOINTS)}")
    spec = importlib.util.find_spec("chgnet")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the reference weights ship inside the 'chgnet' package, which is not installed: "
            "pip install chgnet (fastchgnet never downloads weights)"
        )
    path = Path(spec.origin).parent / CHECKPOINTS[version]
    if not path.is_file():
        raise FileNotFoundError(f"chgnet is installed but has no checkpoint at {path}")
    return path


#: The reference CHGNet constructor's defaults for the settings we read (chgnet 0.3/0.4), used
#: when a file's ``model_args`` leave one out.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "atom_fea_dim": 64,
    "bond_fea_dim": 64,
    "angle_fea_dim": 64,
    "num_radial": 31,
    "num_angular": 31,
    "n_conv": 4,
    "atom_conv_hidden_dim": 64,
    "bond_conv_hidden_dim": 64,
    "angle_layer_hidden_dim": 0,
    "mlp_hidden_dims": (64, 64, 64),
    "atom_graph_cutoff": 6,
    "bond_graph_cutoff": 3,
    "cutoff_coeff": 8,
    "learnable_rbf": True,
    "gMLP_norm": "layer",
    "readout_norm": "layer",
}

#: Reference settings that must hold for the weights to mean the same here, with the reason.
REQUIRED = {
    "mlp_first": (True, "only the mlp-first (site energy) readout exists here"),
    "is_intensive": (True, "energies are per atom here"),
    "non_linearity": ("silu", "the gated MLPs use SiLU here"),
    "update_bond": (True, "bond updates are always on here"),
    "update_angle": (True, "angle updates are always on here"),
    "final_mlp": ("MLP", "the energy readout is a plain MLP here"),
    "conv_norm": (None, "conv layers have no extra norm here"),
}


def _width(args: dict[str, Any], key: str, source: str) -> int:
    """A hidden width that the reference allows as an int or a list: one layer only here."""
    value = args.get(key, REFERENCE_DEFAULTS[key])
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{source}: {key}={value!r}; only one hidden layer is supported")
        value = value[0]
    return int(value)


def config_from_reference(
    args: dict[str, Any], source: str, state_dict: dict[str, Tensor] | None = None
) -> ModelConfig:
    """Translate reference ``model_args`` into our ModelConfig (conservative, coupled).

    ``mlp_out_bias`` follows ``args`` or, when ``state_dict`` is given, whether the weights
    have conv output biases (0.2.0 has them; chgnet issue 79).

    Raises:
        ValueError: naming ``source`` and the setting this architecture cannot reproduce.
    """
    for key, (wanted, why) in REQUIRED.items():
        value = args.get(key, wanted)
        if value == wanted or (key == "final_mlp" and value == "normal"):
            continue
        raise ValueError(f"{source}: {key}={value!r} is not supported ({why})")
    hidden = args.get("mlp_hidden_dims", REFERENCE_DEFAULTS["mlp_hidden_dims"])
    bias = bool(args.get("mlp_out_bias", False))
    if state_dict is not None:
        bias = any(k.endswith("mlp_out.layers.1.bias") for k in state_dict)

    def get(key: str) -> Any:
        return args.get(key, REFERENCE_DEFAULTS[key])

    for key in ("gMLP_norm", "readout_norm"):  # named as chgnet names them
        if get(key) not in ("layer", None):
            raise ValueError(f"{source}: {key}={get(key)!r} is not supported (use 'layer' or None)")
    return ModelConfig(
        atom_fea_dim=int(get("atom_fea_dim")),
        bond_fea_dim=int(get("bond_fea_dim")),
        angle_fea_dim=int(get("angle_fea_dim")),
        num_radial=int(get("num_radial")),
        num_angular=int(get("num_angular")),
        n_conv=int(get("n_conv")),
        atom_conv_hidden_dim=_width(args, "atom_conv_hidden_dim", source),
        bond_conv_hidden_dim=_width(args, "bond_conv_hidden_dim", source),
        angle_hidden_dim=_width(args, "angle_layer_hidden_dim", source),
        mlp_hidden_dims=tuple([hidden] if isinstance(hidden, int) else hidden),
        atom_cutoff=float(get("atom_graph_cutoff")),
        bond_cutoff=float(get("bond_graph_cutoff")),
        cutoff_coeff=int(get("cutoff_coeff")),
        learnable_rbf=bool(get("learnable_rbf")),
        gated_norm=get("gMLP_norm"),
        readout_norm=get("readout_norm"),
        mlp_out_bias=bias,
    )


def _gated(ref: dict[str, Tensor], src: str, dst: str, hidden: bool) -> dict[str, Tensor]:
    """Map one reference GatedMLP (mlp_core/mlp_gate/bn1/bn2) to ours."""
    first = 0 if hidden else 1  # with no hidden layer the reference puts a Dropout first
    out: dict[str, Tensor] = {}
    for kind in ("weight", "bias"):
        out[f"{dst}.first.{kind}"] = torch.cat(
            [
                ref[f"{src}.mlp_core.layers.{first}.{kind}"],
                ref[f"{src}.mlp_gate.layers.{first}.{kind}"],
            ]
        )
        if hidden:
            out[f"{dst}.core_out.{kind}"] = ref[f"{src}.mlp_core.layers.3.{kind}"]
            out[f"{dst}.gate_out.{kind}"] = ref[f"{src}.mlp_gate.layers.3.{kind}"]
        for ours, theirs in (("core_norm", "bn1"), ("gate_norm", "bn2")):
            if f"{src}.{theirs}.{kind}" in ref:
                out[f"{dst}.{ours}.{kind}"] = ref[f"{src}.{theirs}.{kind}"]
    return out


def map_state_dict(ref: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Reference CHGNet state dict -> FastCHGNet state dict."""
    composition = ref.get("composition_model.fc.weight")
    if composition is None:  # a reference model built with composition_model=None
        composition = torch.zeros(config.max_num_elements)
    out = {
        "composition.energies": composition.reshape(-1),
        "atom_embedding.weight": ref["atom_embedding.embedding.weight"],
        "radial_atom.frequencies": ref["bond_basis_expansion.rbf_expansion_ag.frequencies"],
        "radial_bond.frequencies": ref["bond_basis_expansion.rbf_expansion_bg.frequencies"],
        "bond_projection.weight": torch.cat(
            [ref["bond_embedding.weight"], ref["bond_weights_ag.weight"]]
        ),
        "bond_graph_weights.weight": ref["bond_weights_bg.weight"],
        "angle_basis.frequencies": ref["angle_basis_expansion.fourier_expansion.frequencies"],
        "angle_embedding.weight": ref["angle_embedding.weight"],
        "magmom_readout.linear.weight": ref["site_wise.weight"],
        "magmom_readout.linear.bias": ref["site_wise.bias"],
    }
    for kind in ("weight", "bias"):
        if f"readout_norm.{kind}" in ref:
            out[f"energy_readout.norm.{kind}"] = ref[f"readout_norm.{kind}"]
    # readout MLP: the reference interleaves activations and a dropout; ours only activations
    ref_linear = sorted({int(k.split(".")[2]) for k in ref if k.startswith("mlp.layers.")})
    for ours, theirs in zip(range(0, 2 * len(ref_linear), 2), ref_linear, strict=True):
        for kind in ("weight", "bias"):
            out[f"energy_readout.mlp.{ours}.{kind}"] = ref[f"mlp.layers.{theirs}.{kind}"]
    atom_hidden = config.atom_conv_hidden_dim > 0
    bond_hidden = config.bond_conv_hidden_dim > 0
    angle_hidden = config.angle_hidden_dim > 0
    for k in range(config.n_conv):
        out |= _gated(
            ref, f"atom_conv_layers.{k}.twoBody_atom", f"atom_convs.{k}.gated", atom_hidden
        )
        out |= _mlp_out(ref, f"atom_conv_layers.{k}", f"atom_convs.{k}")
    for k in range(config.n_conv - 1):
        out |= _gated(
            ref, f"bond_conv_layers.{k}.twoBody_bond", f"bond_convs.{k}.gated", bond_hidden
        )
        out |= _mlp_out(ref, f"bond_conv_layers.{k}", f"bond_convs.{k}")
        out |= _gated(
            ref, f"angle_layers.{k}.twoBody_bond", f"angle_updates.{k}.gated", angle_hidden
        )
    return out


def _mlp_out(ref: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out = {f"{dst}.mlp_out.weight": ref[f"{src}.mlp_out.layers.1.weight"]}
    if f"{src}.mlp_out.layers.1.bias" in ref:
        out[f"{dst}.mlp_out.bias"] = ref[f"{src}.mlp_out.layers.1.bias"]
    return out


def check_reference_modes(version: str, config: ModelConfig, modes: dict[str, Any]) -> None:
    """Refuse to load reference weights into any mode but the one they were trained for.

    Raises:
        ValueError: a requested setting differs from the reference's (e.g. ``forces="direct"``
            or ``coupled_updates=False``) or is not a ModelConfig setting.
    """
    reference = config.to_dict()
    unknown = sorted(set(modes) - set(reference))
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown} for reference {version}")
    requested = ModelConfig.from_dict({**reference, **modes}).to_dict()
    differing = {k: requested[k] for k in modes if requested[k] != reference[k]}
    if differing:
        wanted = ", ".join(f"{k}={v!r}" for k, v in differing.items())
        raise ValueError(
            f"reference CHGNet {version} weights were trained with forces='conservative' and "
            f"coupled_updates=True (its own architecture); they cannot be loaded into a model "
            f"with {wanted}. Build that model with FastCHGNet({wanted}) and train it instead."
        )


def model_from_reference_dict(
    cls: type[FastCHGNet], model_dict: dict[str, Any], source: str, **modes: Any
) -> FastCHGNet:
    """A FastCHGNet from a reference ``{"model_args": ..., "state_dict": ...}`` dict (what
    chgnet's ``CHGNet.as_dict`` returns and its Trainer saves under "model"), in eval mode.
    The file's cutoffs and composition (AtomRef) energies are kept.

    Raises:
        ValueError: naming ``source`` when the dict is not a CHGNet model of this architecture.
    """
    args, state = model_dict.get("model_args"), model_dict.get("state_dict")
    if not isinstance(args, dict) or not isinstance(state, dict):
        raise ValueError(f"{source}: not a CHGNet model (no model_args and state_dict)")
    config = config_from_reference(args, source, state)
    check_reference_modes(source, config, modes)
    model = cls(config)
    try:
        mapped = map_state_dict(state, config)
        check_weights_fit(model.state_dict(), mapped)  # one line: names and shapes
    except KeyError as exc:
        raise ValueError(f"{source}: weights do not fit the CHGNet architecture ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    model.load_state_dict(mapped)
    model.eval()
    return model


def is_reference_model(model: Any) -> bool:
    """Whether ``model`` is the reference package's ``chgnet.model.CHGNet`` (told by its class's
    module, so asking needs no chgnet installed)."""
    cls = type(model)
    return cls.__name__ == "CHGNet" and cls.__module__.split(".")[0] == "chgnet"
