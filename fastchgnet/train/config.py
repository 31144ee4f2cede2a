"""TrainConfig: the typed run configuration, stored in every checkpoint.

Sections: ``data``, ``model``, ``optim``, ``loss`` (``LossConfig``), ``run``. Read from TOML or
JSON (``load_config``), overridden by ``--set section.key=value`` (``apply_overrides``); an
unknown section or key, or a value of the wrong type, is an error naming it. The defaults are
the quick start: a small direct-mode model on the bundled data set, minutes on 2 CPU cores.

Over 300 lines on purpose: every training setting with its documentation, in one typed
config that checkpoints store.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from fastchgnet.data.ase_labels import AseLabels
from fastchgnet.data.field_types import coerce
from fastchgnet.model.config import ModelConfig
from fastchgnet.model.loss import LossConfig


@dataclass(frozen=True)
class DataConfig:
    """Where the structures come from and how they are batched.

    source: "quickstart" (the bundled set), a graph cache folder, or frames (extxyz/ASE file,
    MPtrj JSON, VASP run dir) converted on first use into ``cache_dir`` (default
    ``<run.out_dir>/cache``). ``batch_size`` is per rank; ``split`` (train, val, test)
    fractions; ``split_by`` "material" (by material id: frames of one material never straddle
    splits) or "frame_tail" (each material's frames in source order: the first ``split[0]``
    train, the next ``split[1]`` val, the tail test; for fine-tuning on one relaxation,
    whose neighbouring frames are near-duplicates); ``max_structures`` > 0 keeps only the
    first that many of ``source`` (replayed frames join on top).
    ``batching``: "balanced" (``batch_size`` structures per rank batch, ranks balanced by
    cost; ``size_pool`` > 0 draws each global batch from a pool of similar sizes, which
    balances ranks more tightly but makes batches less random: on one rank it cost accuracy,
    val energy MAE 738.5 vs 716.8 meV/atom in ``bench/bench_train.py --epochs 8``, so the
    default 0 draws batches uniformly at random), "packed" (every rank batch filled to one
    fixed capacity holding ``batch_size`` structures on average: one shape, as compiled
    training needs) or "auto" (packed when ``run.compile`` is on, else balanced).
    ``val_source``/``test_source``: explicit validation and test frames (files as ``source``);
    with either, ``source`` is the training set, ``split`` is not used, and the cache holds
    all three with split-tagged frame ids. ``explicit_split``: ``source`` is a cache built
    that way (split by its tags). ``labels``: key names and units of extxyz/ASE-db sources
    (``fastchgnet.data.ase_labels.AseLabels``: energy, forces, stress, magmoms keys,
    energy_per_atom, stress_unit "eV/A^3"|"GPa"|"kBar", stress_sign "ase"|"vasp").
    ``replay_source``/``replay_fraction``: fine-tuning against forgetting: that share of the
    frames of a base data set (frames, e.g. the pretraining extxyz or MPtrj JSON; drawn once, by
    a seeded hash of each frame id) joins the training split (never val or test) in the cache;
    give both or neither.
    ``loader_workers``: processes per rank that read and collate batches, for training and
    evaluation; -1 ("auto") is 0 on a CPU and min(4, cores per local rank) on a GPU
    (``fastchgnet.train.loading.loader_workers``). They persist across epochs.
    """

    source: str = "quickstart"
    cache_dir: str = ""
    energy_key: str = "corrected_total_energy"
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    split_seed: int = 0
    split_by: Literal["material", "frame_tail"] = "material"
    batch_size: int = 32
    size_pool: int = 0
    batching: Literal["auto", "balanced", "packed"] = "auto"
    loader_workers: int = -1
    convert_workers: int = 1
    max_structures: int = 0
    val_source: str = ""
    test_source: str = ""
    explicit_split: bool = False
    labels: AseLabels = field(default_factory=AseLabels)
    replay_source: str = ""
    replay_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(
            "data",
            self,
            batch_size=(self.batch_size >= 1, "must be at least 1"),
            size_pool=(self.size_pool >= 0, "must be >= 0 (0: batches drawn uniformly)"),
            loader_workers=(self.loader_workers >= -1, "must be >= -1 (-1: auto)"),
            convert_workers=(self.convert_workers >= 1, "must be at least 1"),
            max_structures=(self.max_structures >= 0, "must be >= 0 (0: all)"),
            replay_fraction=(0 <= self.replay_fraction <= 1, "must be in [0, 1]"),
        )
        outside = [f for f in self.split if not 0 <= f <= 1]  # NaN too
        if outside or abs(sum(self.split) - 1) > 1e-6:
            found = f"{outside[0]} is not" if outside else f"they sum to {sum(self.split):.6g}"
            raise ValueError(
                f"config data.split={list(self.split)}: give the train, val and test "
                f"fractions, each in [0, 1], summing to 1 ({found})"
            )
        if self.replay_source and not self.replay_fraction:
            raise ValueError(
                f"config data.replay_source={self.replay_source!r} with "
                "data.replay_fraction=0 replays nothing: give data.replay_fraction > 0, or "
                "no data.replay_source"
            )
        if self.replay_fraction and not self.replay_source:
            raise ValueError(
                f"config data.replay_fraction={self.replay_fraction} without "
                "data.replay_source: name the base frames to replay, or set it to 0"
            )

    @property
    def explicit(self) -> bool:
        """Whether splits come from separate files (tags in the cache), not fractions."""
        return bool(self.explicit_split or self.val_source or self.test_source)


#: ``ModelSection.architecture``'s default: the quick start's small model. A model.init other
#: than "scratch" brings its own architecture, and drops this default.
ARCHITECTURE: dict[str, Any] = {
    "atom_fea_dim": 32,
    "bond_fea_dim": 32,
    "angle_fea_dim": 32,
    "atom_conv_hidden_dim": 32,
    "bond_conv_hidden_dim": 32,
    "mlp_hidden_dims": [32, 32],
    "num_radial": 15,
    "num_angular": 15,
    "n_conv": 3,
    "forces": "direct",
    "coupled_updates": False,
    "head_hidden_dims": [64],
}


@dataclass(frozen=True)
class ModelSection:
    """The model to train.

    init: "scratch" (a new model with ``architecture``), "reference:0.3.0" (pretrained weights
    of the chgnet package; also 0.2.0, r2scan) or a path to our model file or checkpoint.
    architecture: ``ModelConfig`` keys for a new model (e.g. forces="direct").
    freeze: parameter name prefixes not trained (e.g. "atom_embedding", "atom_convs.0").
    fit_composition: least-squares fit of the AtomRef element energies on the training
    energies before training (default: for new models only).
    """

    init: str = "scratch"
    architecture: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(ARCHITECTURE))
    freeze: tuple[str, ...] = ()
    fit_composition: Literal["auto", "yes", "no"] = "auto"

    def __post_init__(self) -> None:
        if self.init != "scratch" and self.architecture == ARCHITECTURE:  # the default's: not
            object.__setattr__(self, "architecture", {})  # the user's (init brings its own)
        if not self.architecture:
            return
        try:  # its types and sizes now, not as a traceback when the model is built or trains
            ModelConfig.from_dict(self.architecture)
        except ValueError as error:
            raise ValueError(f"config model.architecture: {error}") from None


def check_ranges(section: str, config: object, **checks: tuple[bool, str]) -> None:
    """Raise ValueError in one line naming ``section.key``, its value and the rule, for the
    first of ``checks`` (key: (holds, rule)) that does not hold."""
    for key, (holds, rule) in checks.items():
        if not holds:
            raise ValueError(f"config {section}.{key}={getattr(config, key)!r}: {rule}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule. The learning rate is ``lr`` scaled by the global batch size B
    (``lr_scaling``: "linear" lr * B / ``lr_reference_batch``, "sqrt" the square root of that
    ratio, "none"); ``scheduler`` "cosine" anneals it to ``lr * min_lr_ratio`` over the run
    (after ``warmup_steps`` of linear warm-up) or "constant". ``grad_clip`` 0: no clipping.
    ``ema_decay`` > 0: an exponential moving average of the weights is validated, tested and
    saved. ``select_metric`` picks best_model.pt and drives ``early_stopping_patience`` (epochs
    without a better score; 0: never stop early): "loss" (each validation MAE in the loss's
    unit, eV/atom, eV/Å, GPa, μB, times its loss prefactor, summed) or one target's MAE
    ("energy_mae" meV/atom, "forces_mae" meV/Å, "stress_mae" GPa, "magmoms_mae" μB); lower is
    better."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 2e-3
    lr_reference_batch: int = 128
    lr_scaling: Literal["linear", "sqrt", "none"] = "none"
    weight_decay: float = 0.0
    scheduler: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 0.0
    epochs: int = 12
    ema_decay: float = 0.0
    early_stopping_patience: int = 0
    select_metric: Literal["loss", "energy_mae", "forces_mae", "stress_mae", "magmoms_mae"] = "loss"

    def __post_init__(self) -> None:
        check_ranges(
            "optim",
            self,
            epochs=(self.epochs >= 1, "must be at least 1"),
            lr=(0 <= self.lr < math.inf, "must be >= 0 and finite"),
            lr_reference_batch=(self.lr_reference_batch >= 1, "must be at least 1"),
            weight_decay=(0 <= self.weight_decay < math.inf, "must be >= 0 and finite"),
            min_lr_ratio=(0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            warmup_steps=(self.warmup_steps >= 0, "must be >= 0"),
            grad_clip=(0 <= self.grad_clip < math.inf, "must be >= 0 (0: no clipping)"),
            ema_decay=(0 <= self.ema_decay < 1, "must be in [0, 1) (0: no EMA)"),
            early_stopping_patience=(self.early_stopping_patience >= 0, "must be >= 0"),
        )


@dataclass(frozen=True)
class RunConfig:
    """Output, checkpoints, logging and the engine.

    ``checkpoint_every`` steps (0: only at epoch ends) and at every epoch end; ``keep`` the
    newest that many. ``max_bad_steps`` non-finite losses in a row stop the run. ``max_steps``
    > 0 stops after that many optimiser steps in all (a checkpoint is written there).
    ``engine``: "auto" (DeepSpeed when launched by it, else plain torch), "torch",
    "deepspeed". ``progress``: "auto" (a bar on terminals), "bar" or "lines". ``threads``:
    torch CPU threads per rank (0: torch's default). One is the default because small graph
    batches gain little from more, and on a busy or shared CPU OpenMP threads that spin-wait
    for each other make a step many times slower (measured 25x on 2 shared cores).
    ``check_sync_every`` > 0: every that many steps, check that all ranks hold bit-identical
    parameters (sha256 compared across ranks); a mismatch stops the run.
    ``compile``: capture the training step (forward, loss and its backward) for the packed
    batches' one padded shape with torch.compile (``fastchgnet.compile``; CUDA graphs on GPU):
    "on", "off" (eager) or "auto": on when training on a GPU; on a CPU (with
    ``data.batching="auto"``) decided once the data is split, by timing one eager step and
    weighing the C++ build (about 90 s for a conservative graph on 2 quiet cores) against the
    steps it would speed up (``fastchgnet.train.compile_choice``; the quick start stays eager).
    ``compile_backend``: "inductor", or "aot_eager" (traced but not code-generated; for tests).
    ``precision``: the energy model's arithmetic in training and evaluation, "float32" or
    "bf16" (bfloat16 autocast of its matrix products; sums, geometry, derivatives, weights and
    optimiser state stay float32: ``FastCHGNet.set_precision``). The saved model is float32
    either way.
    """

    out_dir: str = "runs/quickstart"
    seed: int = 0
    checkpoint_every: int = 200
    keep: int = 3
    max_bad_steps: int = 5
    max_steps: int = 0
    log_every: int = 20
    progress: Literal["auto", "bar", "lines"] = "auto"
    tensorboard: bool = False
    plots: bool = True
    engine: Literal["auto", "torch", "deepspeed"] = "auto"
    deepspeed_config: str = ""
    threads: int = 1
    check_sync_every: int = 0
    compile: Literal["auto", "on", "off"] = "auto"
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"
    precision: Literal["float32", "bf16"] = "float32"
    dist_timeout_s: float = 600.0
    profile_steps: tuple[int, ...] = ()
    sync_debug: bool = False

    def __post_init__(self) -> None:
        check_ranges(
            "run",
            self,
            checkpoint_every=(self.checkpoint_every >= 0, "must be >= 0 (0: at epoch ends)"),
            keep=(self.keep >= 1, "must be at least 1"),
            max_bad_steps=(self.max_bad_steps >= 1, "must be at least 1"),
            max_steps=(self.max_steps >= 0, "must be >= 0 (0: no limit)"),
            threads=(self.threads >= 0, "must be >= 0 (0: torch's default)"),
            check_sync_every=(self.check_sync_every >= 0, "must be >= 0 (0: never)"),
            out_dir=(bool(self.out_dir.strip()), "must name a folder (. for this one)"),
        )
        if self.log_every < 1:
            raise ValueError(f"config run.log_every={self.log_every}: must be at least 1")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"config run.dist_timeout_s={self.dist_timeout_s}: must be > 0")
        if self.profile_steps and (
            len(self.profile_steps) != 2 or not 1 <= self.profile_steps[0] <= self.profile_steps[1]
        ):
            raise ValueError(
                f"config run.profile_steps={list(self.profile_steps)}: use [start, stop] "
                "global steps, 1 <= start <= stop"
            )

    def compiles(self, device: str) -> bool:
        """Whether training on ``device`` ("cpu", "cuda", ...) runs the captured step."""
        return self.compile == "on" or (self.compile == "auto" and device.startswith("cuda"))


#: The quick start's loss (see configs/quickstart.toml for why): MSE, which R² measures, with
#: prefactors that put the four targets' squared errors on a similar scale. ``LossConfig()``
#: itself stays the paper's Huber loss, which configs/mptrj.toml spells out.
QUICKSTART_LOSS = LossConfig(kind="mse", energy=1.0, forces=5.0, stress=0.002, magmoms=0.1)


@dataclass(frozen=True)
class TrainConfig:
    """The whole run configuration; see each section's docstring."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=lambda: QUICKSTART_LOSS)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly dict of every setting."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dicts; unknown sections/keys and wrong types raise ValueError."""
        return _build(cls, data, "")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config {where or 'root'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[where + k for k in unknown]}; known: {sorted(known)}"
        )
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if is_dataclass(kind):
            values[name] = _build(kind, value, f"{where}{name}.")
        else:
            values[name] = coerce(kind, value, f"config {where}{name}")
    return cls(**values)


def read_table(path: str | Path) -> dict[str, Any]:
    """Nested dict from a .toml or .json file; a syntax error is one ValueError naming the
    file (``<path>: not valid TOML: <reason>``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    kind, parse, error = (
        ("JSON", json.loads, json.JSONDecodeError)
        if path.suffix == ".json"
        else ("TOML", tomllib.loads, tomllib.TOMLDecodeError)
    )
    try:
        return parse(path.read_text())
    except error as failure:
        raise ValueError(f"{path}: not valid {kind}: {failure}") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, true/false, lists, quoted strings), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.key=value`` (``model.architecture.forces=direct`` reaches into the
    architecture table) and re-validate."""
    data = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: use section.key=value")
        parts = key.split(".")
        table = data
        for part in parts[:-1]:
            if not isinstance(table.get(part), dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a config table")
            table = table[part]
        if parts[-1] not in table and parts[:2] != ["model", "architecture"]:
            raise ValueError(f"--set {item!r}: unknown key {key!r}")
        table[parts[-1]] = parse_value(text)
    return TrainConfig.from_dict(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The defaults (quick start), updated by the file at ``path`` and ``overrides``. Relative
    paths in the result are the working folder's, not the config file's."""
    config = TrainConfig.from_dict(read_table(path)) if path else TrainConfig()
    return apply_overrides(config, overrides or [])


def with_run(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy with ``run`` fields changed (e.g. out_dir)."""
    return replace(config, run=replace(config.run, **changes))
