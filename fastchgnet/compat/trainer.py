"""``Trainer`` with the reference's arguments, mapped onto ``fastchgnet.train`` (see
``fastchgnet.compat.training`` for the data side)."""

from __future__ import annotations

import csv
import datetime
import inspect
import itertools
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from fastchgnet.compat.labels import skipped_report
from fastchgnet.compat.model import CHGNet, is_reference_model, unsupported
from fastchgnet.compat.trainer_errors import (
    TrainerInterrupted,
    argument_error,
    interrupted_message,
    unknown_keywords,
)
from fastchgnet.compat.training import StructureData, StructureLoader
from fastchgnet.compat.utils import AverageMeter, determine_device, mae, write_json
from fastchgnet.data.split import tag_split
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.chgnet_files import read_checkpoint
from fastchgnet.model.loss import LossConfig
from fastchgnet.train.checkpoint import latest_checkpoint, rank_file
from fastchgnet.train.config import (
    DataConfig,
    ModelSection,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from fastchgnet.train.interrupt import Interrupted
from fastchgnet.train.metrics import REPORTED
from fastchgnet.train.run import device_type

CRITERIA = {"MSE": "mse", "mse": "mse", "Huber": "huber"}
OPTIMIZERS = {"Adam": "adam", "AdamW": "adamw"}
SCHEDULERS = {"CosLR": "cosine", "CosineAnnealingLR": "cosine", "Cos": "cosine", "cos": "cosine"}
#: reference target letter -> our metric name
TARGET_NAMES = {"e": "energy", "f": "forces", "s": "stress", "m": "magmoms"}


def frozen_parameters(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of the parameters the user stopped training (``requires_grad = False``, as
    chgnet's fine-tuning recipe sets them), for the run's ``model.freeze``. The AtomRef
    energies are left out: they are never trained by gradient (``fit_composition`` refits
    them)."""
    return tuple(
        name
        for name, parameter in model.named_parameters()
        if not parameter.requires_grad and name != "composition.energies"
    )


def check_converter(dataset: StructureData, model: CHGNet) -> None:
    """A ``graph_converter`` given to ``dataset`` must have ``model``'s cutoffs (training
    builds the graphs with the model's)."""
    converter, config = dataset.graph_converter, model.config
    cutoffs = (converter.atom_graph_cutoff, converter.bond_graph_cutoff)
    if dataset.converter_given and cutoffs != (config.atom_cutoff, config.bond_cutoff):
        raise ValueError(
            f"StructureData graph_converter cutoffs {cutoffs} Å differ from the model's "
            f"{(config.atom_cutoff, config.bond_cutoff)} Å: pass model.graph_converter"
        )


class Trainer:
    """Train a ``CHGNet`` on ``StructureData`` loaders, as the reference's Trainer.

    Mapped: targets ("e" and any of "fsm": "ef", "efsm", "em") and the four loss ratios,
    criterion "MSE" or "Huber" (``delta``), optimizer "Adam"/"AdamW" (``weight_decay``),
    scheduler "CosLR" (cosine to ``decay_fraction`` x lr), learning_rate, epochs, torch_seed;
    ``Trainer.load`` (see there). Parameters set to
    ``requires_grad = False`` before ``train`` (chgnet's freezing recipe) are not trained.
    Anything else the reference offers raises NotImplementedError naming the fastchgnet setting
    to use; a keyword chgnet's Trainer does not take either is a TypeError ("did you mean").

    What ``train`` writes in ``save_dir`` (chgnet writes ``epoch*.pth.tar`` and
    ``bestE_*.pth.tar`` there): ``model.pt``, the last epoch's model (chgnet's last
    ``epoch*`` file); ``best_model.pt``, the epoch with the lowest validation energy MAE
    (chgnet's ``bestE_*``; ``best_model.txt`` says which epoch); ``checkpoints/step-*/``
    (``rank-00000.pt``: the training state, for ``fastchgnet train --resume --set
    run.out_dir=<save_dir>``); ``metrics.csv``, ``train_log.csv``, ``config.json``, the graph
    cache (``cache/``, with ``skipped.json``) and ``initial_model.pt``. Each model file and
    each checkpoint (its file or step folder) loads with ``CHGNet.from_file(path)``, as
    chgnet's ``.pth.tar`` files do.
    """

    def __init__(
        self,
        model: CHGNet | None = None,
        *,
        targets: str = "ef",
        energy_loss_ratio: float = 1,
        force_loss_ratio: float = 1,
        stress_loss_ratio: float = 0.1,
        mag_loss_ratio: float = 0.1,
        allow_missing_labels: bool = True,
        optimizer: str = "Adam",
        scheduler: str = "CosLR",
        criterion: str = "MSE",
        epochs: int = 50,
        starting_epoch: int = 0,
        learning_rate: float = 1e-3,
        print_freq: int = 100,
        torch_seed: int | None = None,
        data_seed: int | None = None,
        use_device: str | None = None,
        check_cuda_mem: bool = False,
        wandb_path: str | None = None,
        wandb_init_kwargs: dict | None = None,
        extra_run_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        if "e" not in targets or set(targets) - set("efsm") or len(set(targets)) < len(targets):
            raise ValueError(f"targets={targets!r}: energy and any of f, s, m ('ef', 'efsm', 'em')")
        checks = [
            (criterion not in CRITERIA, f"criterion={criterion!r}", f"use {sorted(CRITERIA)}"),
            (optimizer not in OPTIMIZERS, f"optimizer={optimizer!r}", f"use {list(OPTIMIZERS)}"),
            (scheduler not in SCHEDULERS, f"scheduler={scheduler!r}", "use 'CosLR'"),
            (starting_epoch != 0, "starting_epoch", "resume with train(config, resume=True)"),
            (not allow_missing_labels, "allow_missing_labels=False", "missing labels are masked"),
            (wandb_path is not None, "wandb", "set run.tensorboard in a TrainConfig"),
            (
                use_device is not None and use_device.split(":")[0] != device_type(),
                f"use_device={use_device!r}",
                f"training runs on {device_type()} here (the GPU where there is one)",
            ),
        ]
        for failed, what, instead in checks:
            if failed:
                raise unsupported(what, instead)
        if is_reference_model(model):  # trained in place: a converted copy would leave it as is
            raise TypeError(
                "Trainer(model=...) is a chgnet CHGNet; it trains its model in place, so give "
                "it a fastchgnet.compat CHGNet: CHGNet.from_dict(model.as_dict())"
            )
        refused = unknown_keywords(kwargs, inspect.signature(Trainer.__init__).parameters)
        if refused is not None:
            raise refused
        decay = dict(kwargs.get("scheduler_params") or {}).get("decay_fraction", 1e-2)
        self.model, self.targets, self.epochs = model, targets, epochs
        try:
            self.loss = LossConfig(
                kind=CRITERIA[criterion],  # type: ignore[arg-type]
                huber_delta=float(kwargs.get("delta", 0.1)),
                energy=float(energy_loss_ratio),
                forces=float(force_loss_ratio) if "f" in targets else 0.0,
                stress=float(stress_loss_ratio) if "s" in targets else 0.0,
                magmoms=float(mag_loss_ratio) if "m" in targets else 0.0,
            )
            default_decay = 1e-2 if optimizer == "AdamW" else 0.0
            self.optim = OptimConfig(
                optimizer=OPTIMIZERS[optimizer],  # type: ignore[arg-type]
                lr=float(learning_rate),
                lr_scaling="none",
                weight_decay=float(kwargs.get("weight_decay", default_decay)),
                scheduler="cosine",
                min_lr_ratio=float(decay),
                epochs=int(epochs),
                select_metric="energy_mae",  # best_model.pt = the reference's bestE file
            )
        except ValueError as error:
            raise argument_error(error) from None
        self.seed = 0 if torch_seed is None else int(torch_seed)
        self.training_history: dict[str, dict[str, Any]] = {
            key: {"train": [], "val": [], "test": []} for key in targets
        }
        self.best_model: CHGNet | None = None
        self.run_dir: Path | None = None

    def config_for(self, cache: Path, init: Path, out: Path, batch_size: int,
                   fit_composition: bool) -> TrainConfig:  # fmt: skip
        """The TrainConfig this trainer's settings map to; the model's parameters with
        ``requires_grad = False`` stay frozen (``model.freeze``, by exact name)."""
        return TrainConfig(
            data=DataConfig(source=str(cache), batch_size=batch_size, explicit_split=True),
            model=ModelSection(
                init=str(init),
                architecture={},
                freeze=frozen_parameters(self.model),
                fit_composition="yes" if fit_composition else "no",
            ),
            optim=self.optim,
            loss=self.loss,
            run=RunConfig(
                out_dir=str(out),
                seed=self.seed,
                progress="lines",
                plots=False,
                engine="torch",
                threads=torch.get_num_threads(),
            ),
        )

    def train(
        self,
        train_loader: StructureLoader,
        val_loader: StructureLoader,
        test_loader: StructureLoader | None = None,
        *,
        save_dir: str | None = None,
        save_test_result: bool = False,
        train_composition_model: bool = False,
        wandb_log_freq: str = "batch",
    ) -> None:
        """Train ``self.model`` in place for ``epochs``; the run (config, cache, checkpoints,
        metrics.csv, model.pt: see the class docstring) goes to ``save_dir``.
        ``train_composition_model``: refit the AtomRef energies (least squares on the training
        energies) before training. Structures that cannot be trained on are skipped and
        printed by their StructureData index (the rest counted; all in cache/skipped.json).

        Raises:
            TrainerInterrupted: Ctrl-C or SIGTERM (a KeyboardInterrupt): the model then holds
                the newest checkpoint's weights, and the message says where it is and how to
                continue the run.
        """
        from fastchgnet.data.convert import convert
        from fastchgnet.train.run import train

        if self.model is None:
            raise ValueError("Model needs to be initialized")
        if self.epochs == 0:
            print("Trainer.train: no epochs left to run")
            return
        if save_test_result:
            raise unsupported("save_test_result", "read metrics.csv in save_dir")
        loaders = {"train": train_loader, "val": val_loader, "test": test_loader}
        given = {name: loader for name, loader in loaders.items() if loader is not None}
        if not all(isinstance(loader, StructureLoader) for loader in given.values()):
            raise TypeError("Trainer.train takes loaders from fastchgnet.compat's loader functions")
        if len({id(loader.dataset) for loader in given.values()}) != 1:
            raise ValueError("train, val and test loaders must come from one StructureData")
        check_converter(train_loader.dataset, self.model)
        stamp = f"{datetime.datetime.now(tz=datetime.timezone.utc):%m-%d-%Y}"
        out = Path(save_dir or stamp)
        cache = out / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        frames = itertools.chain.from_iterable(
            tag_split(loader.dataset.frames(loader.indices), name) for name, loader in given.items()
        )
        config = self.model.config
        convert(frames, cache, config.atom_cutoff, config.bond_cutoff, workers=1, progress=False)
        report = skipped_report(cache / "skipped.json", sum(len(x.indices) for x in given.values()))
        if report:
            print(report)
        init = out / "initial_model.pt"
        self.model.save(init)
        # absolute data and model paths: ``fastchgnet train --resume`` works from any directory
        run = self.config_for(
            cache.resolve(), init.resolve(), out, train_loader.batch_size, train_composition_model
        )
        try:
            train(run)
        except Interrupted as stop:
            raise self._interrupted(stop, out) from None
        trained = FastCHGNet.load(out / "model.pt")
        device = next(self.model.parameters()).device
        self.model.load_state_dict(trained.state_dict())
        self.model.to(device)
        self.run_dir = out
        best = out / "best_model.pt"
        self.best_model = CHGNet.from_file(best).to(device) if best.is_file() else self.model
        self._read_history(out / "metrics.csv")

    def _interrupted(self, stop: Interrupted, out: Path) -> TrainerInterrupted:
        """``stop`` saying what was kept: the newest checkpoint's weights are loaded into
        ``self.model`` (as chgnet's in-place training leaves a stopped model part-trained)."""
        out = out.resolve()
        folder = latest_checkpoint(out / "checkpoints") if stop.checkpoint is not None else None
        checkpoint = None if folder is None else rank_file(folder, 0)
        if checkpoint is not None:
            device = next(self.model.parameters()).device
            self.model.load_state_dict(CHGNet.from_file(checkpoint).state_dict())
            self.model.to(device)
        return TrainerInterrupted(stop, interrupted_message(stop, out, checkpoint))

    def _read_history(self, path: Path) -> None:
        """Val (per epoch) and test MAE from metrics.csv, in the reference's units (eV)."""
        if not path.is_file():
            return
        with path.open() as handle:
            for row in csv.DictReader(handle):
                for letter in self.targets:
                    name = TARGET_NAMES[letter]
                    if not row.get(f"{name}_mae"):  # a target without labels
                        continue
                    value = float(row[f"{name}_mae"]) / REPORTED[name][1]
                    if row["split"] == "test":
                        self.training_history[letter]["test"] = value
                    else:
                        self.training_history[letter][row["split"]].append(value)

    @classmethod
    def load(cls, path: str) -> Trainer:
        """A Trainer over the model in ``path`` (a chgnet Trainer file or any file
        ``CHGNet.from_file`` reads) with the file's trainer settings and training history.
        The optimizer and scheduler states are not restored (a warning says so): ``train``
        runs the epochs left with a fresh optimizer and schedule."""
        payload = read_checkpoint(path) if Path(path).is_file() else {}  # a run folder
        model = CHGNet.from_file(path)
        print(f"Loaded model params = {sum(p.numel() for p in model.parameters()):,}")
        args = {k: v for k, v in (payload.get("trainer_args") or {}).items() if k != "model"}
        history = payload.get("training_history")
        done = len(history["e"]["train"]) if history else 0
        left = max(int(args.get("epochs", 50)) - done, 0)
        args |= {"starting_epoch": 0, "epochs": max(left, 1)}
        if done and left:
            warnings.warn(
                f"Trainer.load: {done} epoch(s) done; the {left} left start a fresh "
                "optimizer and schedule (for an exact resume train with TrainConfig and "
                "resume=True)",
                stacklevel=2,
            )
        trainer = cls(model, **args)
        trainer.epochs = left  # 0: train() has nothing left to run, as chgnet's
        if history:
            trainer.training_history = history
        return trainer

    def get_best_model(self) -> CHGNet:
        """The model of the epoch with the lowest validation energy MAE (``best_model.pt``
        in ``save_dir``), as the reference's."""
        if self.best_model is None:
            raise RuntimeError("the model needs to be trained first")
        return self.best_model

    def save(self, filename: str = "training_result.pth.tar") -> None:
        """Write the model (our format; ``CHGNet.from_file`` reads it)."""
        if self.model is None:
            raise ValueError("Model needs to be initialized")
        self.model.save(filename)


#: chgnet.trainer.trainer's helpers, importable from here as there
__all__ = [
    "AverageMeter",
    "CHGNet",
    "Trainer",
    "determine_device",
    "mae",
    "write_json",
]
