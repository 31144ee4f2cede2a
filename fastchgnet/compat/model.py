"""``CHGNet``: our model under the reference's name, with its public methods and outputs.

A ``CHGNet`` is a ``FastCHGNet`` (an ``nn.Module``: ``.to``, ``.eval``, ``state_dict`` work)
that also answers the reference's calls: ``CHGNet.load(model_name=, use_device=)``,
``from_file``, ``from_dict``, ``as_dict``, ``predict_structure`` and ``predict_graph`` with the
reference's keys and units (``e`` eV/atom, ``f`` eV/Å, ``s`` GPa, ``m`` μB, ``site_energies``
eV, ``atom_fea``, ``crystal_fea``; numpy float32 arrays, ``e`` 0-d).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastchgnet.compat.graph import CrystalGraphConverter
from fastchgnet.compat.reference_names import ReferenceNames
from fastchgnet.data.graph import CrystalGraph
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.chgnet_files import load_model_file, read_checkpoint, reference_model_dict
from fastchgnet.model.config import ModelConfig
from fastchgnet.model.device import check_device
from fastchgnet.model.io import FORMAT, load_model, load_weights
from fastchgnet.model.potential import (
    check_batch_size,
    predict_graph_list,
    structure_list,
)
from fastchgnet.model.reference import (
    CHECKPOINTS,
    checkpoint_path,
    config_from_reference,
    is_reference_model,
    model_from_reference_dict,
)

#: The reference's float type (``chgnet.model.model.TORCH_DTYPE``): the models' default.
TORCH_DTYPE = torch.float32
#: The tasks of the reference's ``predict_structure`` (letters: energy, forces, stress, magmoms).
PRED_TASKS = ("e", "ef", "em", "efs", "efsm")
#: Composition model names of the reference -> the packaged checkpoint holding those energies.
COMPOSITION_MODELS = {"MPtrj": "0.3.0", "MPtrj_e": "0.2.0", "MP-r2SCAN": "r2scan"}
_CONFIG_KEYS = {f.name for f in fields(ModelConfig)}
#: Every argument of the reference ``CHGNet.__init__`` with its default: the reference's
#: ``model_args`` holds all of them (defaults filled in), then any extra keyword arguments.
REFERENCE_MODEL_ARGS: dict[str, Any] = {
    "atom_fea_dim": 64, "bond_fea_dim": 64, "angle_fea_dim": 64, "composition_model": "MPtrj",
    "num_radial": 31, "num_angular": 31, "n_conv": 4, "atom_conv_hidden_dim": 64,
    "update_bond": True, "bond_conv_hidden_dim": 64, "update_angle": True,
    "angle_layer_hidden_dim": 0, "conv_dropout": 0, "read_out": "ave",
    "mlp_hidden_dims": (64, 64, 64), "mlp_dropout": 0, "mlp_first": True, "is_intensive": True,
    "non_linearity": "silu", "atom_graph_cutoff": 6, "bond_graph_cutoff": 3,
    "graph_converter_algorithm": "fast", "cutoff_coeff": 8, "learnable_rbf": True,
    "gMLP_norm": "layer", "readout_norm": "layer", "version": None,
}  # fmt: skip


def reference_model_args(given: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` as the reference reports them: its defaults updated by ``given``."""
    return {**REFERENCE_MODEL_ARGS, **given}


def check_reference_args(args: dict[str, Any], source: str, *, new: bool = False) -> None:
    """Refuse, in one line naming ``source`` and chgnet's argument, a norm this architecture
    lacks; for a ``new`` model (to be trained) also dropout, which it does not have."""
    for key in ("gMLP_norm", "readout_norm"):
        if args.get(key, "layer") not in ("layer", None):
            raise ValueError(f"{source}: {key}={args[key]!r} is not supported; use 'layer' or None")
    for key in ("conv_dropout", "mlp_dropout") if new else ():
        if args.get(key, 0):
            raise ValueError(f"{source}: {key}={args[key]!r} is not supported (no dropout here)")


def our_model_dict(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The ``as_dict()`` of this class in a file's dict (bare or under "model"), or None."""
    inner = payload.get("model")
    if isinstance(inner, dict) and "fastchgnet_config" in inner:
        return inner
    return payload if "fastchgnet_config" in payload else None


def unsupported(what: str, instead: str) -> NotImplementedError:
    """The error for a reference option this module does not offer, with what to use."""
    return NotImplementedError(f"fastchgnet.compat: {what} is not supported; {instead}")


def determine_device(use_device: str | None = None, check_cuda_mem: bool = False) -> str:
    """``use_device``, else $CHGNET_DEVICE, else "cuda" when available, else "cpu"; with
    ``check_cuda_mem``, "cuda" becomes the GPU with the most free memory ("cuda:2"). A device
    asked for that this torch cannot use is a one-line ValueError (``check_device``)."""
    device = use_device or os.getenv("CHGNET_DEVICE")
    if device == "mps":
        raise unsupported("use_device='mps'", "use 'cpu' or 'cuda'")
    if device is not None:
        check_device(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and check_cuda_mem:
        free = [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]
        device = f"cuda:{max(range(len(free)), key=free.__getitem__)}"
    return device


class CHGNet(ReferenceNames, FastCHGNet):
    """FastCHGNet with the reference ``chgnet.model.CHGNet`` API.

    ``CHGNet()`` is the reference architecture with fresh weights and the MPtrj composition
    energies (as the reference); ``CHGNet(**model_args)`` takes the reference's keyword
    arguments (``atom_fea_dim``, ``n_conv``, ``composition_model``, ...); ``CHGNet(config)`` or
    ``CHGNet(forces="direct")`` take ours.
    """

    is_intensive = True

    def __init__(self, config: ModelConfig | None = None, **kwargs: Any) -> None:
        reference_args = None
        shared = {k: v for k, v in kwargs.items() if k in REFERENCE_MODEL_ARGS}  # n_conv, ...
        if config is None:
            check_reference_args(kwargs, "CHGNet(...)", new=True)
        if config is None and set(kwargs) - _CONFIG_KEYS:
            reference_args = dict(kwargs)
            config, kwargs = config_from_reference(reference_args, "CHGNet(...)"), {}
        elif isinstance(kwargs.get("mlp_hidden_dims"), int):  # the reference takes an int
            kwargs["mlp_hidden_dims"] = (kwargs["mlp_hidden_dims"],)
        super().__init__(config, **kwargs)
        self.model_args: dict[str, Any] = {}
        if config is None or reference_args is not None:  # a new model, as the reference's
            self.model_args = reference_model_args(reference_args or shared)
            composition = self.model_args.get("composition_model", "MPtrj")
            self.init_composition(composition)
        self.graph_converter = CrystalGraphConverter.for_model(self.config)

    def init_composition(self, name: str | None) -> None:
        """Set the AtomRef energies to the reference's fitted ``name`` ("MPtrj", "MPtrj_e",
        "MP-r2SCAN"; read from the installed chgnet's checkpoints) or zeros (None)."""
        if name is None:
            return
        if name not in COMPOSITION_MODELS:
            raise unsupported(f"composition_model={name!r}", f"use {sorted(COMPOSITION_MODELS)}")
        try:
            source = load_model_file(FastCHGNet, checkpoint_path(COMPOSITION_MODELS[name]))
        except ModuleNotFoundError:
            warnings.warn(f"chgnet not installed: composition {name} left at zero", stacklevel=3)
            return
        with torch.no_grad():
            self.composition.energies.copy_(source.composition.energies)

    @property
    def version(self) -> str | None:
        """The pretrained version this model was loaded as, if any."""
        return self.model_args.get("version")

    def forward(self, batch: Any, **kwargs: Any) -> Any:
        if isinstance(batch, (list, tuple)):
            raise TypeError(
                "fastchgnet.compat: CHGNet(...) is called on a GraphBatch here; for a list of "
                "CrystalGraphs use predict_graph(graphs, task=...)"
            )
        return super().forward(batch, **kwargs)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(  # type: ignore[override]
        cls,
        model_name: str = "0.3.0",
        *,
        use_device: str | None = None,
        check_cuda_mem: bool = False,
        verbose: bool = True,
    ) -> CHGNet:
        """The pretrained model ``model_name`` ("0.3.0", "0.2.0", "r2scan") from the installed
        chgnet package, on ``use_device`` (default: cuda when available)."""
        if model_name not in CHECKPOINTS:
            raise ValueError(
                f"Unknown model_name={model_name!r}: use one of {sorted(CHECKPOINTS)}, or "
                "CHGNet.from_file(path) for a file"
            )
        device = determine_device(use_device, check_cuda_mem)  # before the file is read
        model = cls.from_file(checkpoint_path(model_name))
        # the reference's load passes these two to its constructor: its model_args has them
        model.model_args.update(version=model_name, mlp_out_bias=model_name == "0.2.0")
        if verbose:
            print(f"CHGNet will run on {device}")
        return model.to(device)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> CHGNet:
        """A model from a chgnet checkpoint (Trainer epoch/best file, pretrained file,
        ``torch.save(CHGNet.as_dict())``, bare or under "model"), our model file,
        ``torch.save`` of this class's ``as_dict()`` (bare or under "model"), or what
        ``fastchgnet predict --model`` reads besides: a training checkpoint (its
        ``rank-00000.pt`` or step folder: the weights ``model.init`` reads, EMA ones where the
        run kept them) or a run folder (its ``model.pt``, else its newest checkpoint); read
        with weights_only=True."""
        from fastchgnet.cli.inputs import training_checkpoint
        from fastchgnet.train.model_setup import load_from_path

        if kwargs:
            raise unsupported(f"from_file(..., {sorted(kwargs)})", "pass only the path")
        if Path(path).is_dir() and (Path(path) / "model.pt").is_file():
            path = Path(path) / "model.pt"  # a run folder, as --model reads it
        checkpoint = training_checkpoint(str(path))
        if checkpoint is not None:
            trained = load_from_path(checkpoint)
            return load_weights(cls(trained.config), trained.state_dict())  # type: ignore[return-value]
        if Path(path).is_dir():
            raise FileNotFoundError(f"{path}: a folder without model.pt or a training checkpoint")
        payload = read_checkpoint(path)
        if payload.get("format") == FORMAT:
            return load_model(cls, path)
        ours = our_model_dict(payload)
        if ours is not None:
            return cls.from_dict(ours)
        model_dict = reference_model_dict(payload, str(path))
        check_reference_args(model_dict.get("model_args") or {}, str(path))
        model = model_from_reference_dict(cls, model_dict, str(path))
        model.model_args = reference_model_args(dict(model_dict["model_args"]))
        return model

    @classmethod
    def from_dict(cls, dct: dict[str, Any], **kwargs: Any) -> CHGNet:
        """A model from ``CHGNet.as_dict()`` of the reference or of this class."""
        if kwargs:
            raise unsupported(f"from_dict(..., {sorted(kwargs)})", "pass only the dict")
        if "fastchgnet_config" in dct:
            model = cls(ModelConfig.from_saved(dct["fastchgnet_config"]))
            load_weights(model, dct["state_dict"])  # in their dtype
            model.model_args = dict(dct.get("model_args") or {})
        else:
            check_reference_args(dct.get("model_args") or {}, "CHGNet.from_dict")
            model = model_from_reference_dict(cls, dct, "CHGNet.from_dict")
            model.model_args = reference_model_args(dict(dct.get("model_args") or {}))
        return model

    def as_dict(self) -> dict[str, Any]:
        """Weights and settings: ``from_dict`` here reads it back (our parameter names)."""
        return {
            "state_dict": self.state_dict(),
            "model_args": dict(self.model_args),
            "fastchgnet_config": self.config.to_dict(),
        }

    def todict(self) -> dict[str, Any]:
        """What ASE stores for a calculator's model in trajectory files."""
        return {"model_name": type(self).__name__, "model_args": dict(self.model_args)}

    # --------------------------------------------------------------- prediction
    def predict_structure(  # type: ignore[override]
        self,
        structure: Any,
        *,
        task: str = "efsm",
        return_site_energies: bool = False,
        return_atom_feas: bool = False,
        return_crystal_feas: bool = False,
        batch_size: int = 16,
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """Predict one pymatgen Structure (or ASE Atoms) or a list, as the reference.

        Returns per structure (one dict for one structure or a one-item list, as the
        reference; ``[]`` for an empty list; numpy arrays): ``e`` () eV/atom, and as ``task``
        asks ``f`` (n, 3) eV/Å, ``s`` (3, 3) GPa, ``m`` (n,) μB; on request ``site_energies``
        (n,) eV (composition included; they sum to the total energy), ``atom_fea`` (n, 64) (the
        atom features the magmom head reads), ``crystal_fea`` (64,) (summed normalised final
        atom features).
        """
        check_batch_size(batch_size)  # before any graph is built
        if isinstance(structure, (list, tuple)) and not structure:
            return []  # as the reference
        structures, _ = structure_list(structure)
        graphs = self.graph_converter.graphs(structures)
        return self.predict_graph(
            graphs,
            task=task,
            return_site_energies=return_site_energies,
            return_atom_feas=return_atom_feas,
            return_crystal_feas=return_crystal_feas,
            batch_size=batch_size,
        )

    def predict_graph(
        self,
        graph: CrystalGraph | Sequence[CrystalGraph],
        *,
        task: str = "efsm",
        return_site_energies: bool = False,
        return_atom_feas: bool = False,
        return_crystal_feas: bool = False,
        batch_size: int = 16,
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """``predict_structure`` for graphs from ``model.graph_converter`` (or
        ``fastchgnet.build_graph``). Puts the model in eval mode, as the reference. Forces and
        stress are computed only when ``task`` asks ("e" and "em": the forward pass alone)."""
        if task not in PRED_TASKS:
            raise ValueError(f"Invalid task={task!r}. Must be one of {PRED_TASKS}.")
        check_batch_size(batch_size)
        graphs = [graph] if isinstance(graph, CrystalGraph) else list(graph)
        if not all(isinstance(g, CrystalGraph) for g in graphs):
            raise TypeError("predict_graph takes fastchgnet CrystalGraphs (model.graph_converter)")
        if not graphs:
            return []  # as the reference
        features = return_site_energies or return_atom_feas or return_crystal_feas
        self.eval()
        results = predict_graph_list(  # forces and stress only as the task asks
            self, graphs, batch_size, features=features, forces="f" in task, stress="s" in task
        )
        keep = set(task) | {
            key
            for key, wanted in (
                ("site_energies", return_site_energies),
                ("atom_fea", return_atom_feas),
                ("crystal_fea", return_crystal_feas),
            )
            if wanted
        }
        # numpy arrays, ``e`` included (0-d), as the reference (torch.from_numpy takes them)
        results = [{k: np.asarray(v) for k, v in item.items() if k in keep} for item in results]
        return results[0] if len(results) == 1 else results


def as_compat_model(model: Any, device: str) -> Any:
    """The ``model`` argument of a compat class as the model it runs, on ``device``: None is
    the pretrained 0.3.0, a reference ``CHGNet`` becomes this module's (its weights and
    ``model_args``, by ``from_dict(model.as_dict())``), anything else is taken as it is."""
    if model is None:
        return CHGNet.load(use_device=device, verbose=False)
    if is_reference_model(model):
        model = CHGNet.from_dict(model.as_dict())
    return model.to(device)
