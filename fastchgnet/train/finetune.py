"""Fine-tuning with a before/after report: the starting model (e.g. CHGNet 0.3.0) and the
fine-tuned one, evaluated on the same held-out frames and on evaluation-only sources.

    python launcher/finetune.py --config configs/finetune.toml \\
        --eval ../shared/data/reference/parse-vasp-with-magmoms.zip   # fastchgnet/cli/finetune.py

The run itself is ``fastchgnet.train.run.train(config)``, unchanged. Held out: the frames of the
run's val and test splits (with ``data.split_by="frame_tail"`` and split [0.8, 0.1, 0.1], the
last 20 % of every trajectory). An ``--eval`` source (frames in any format ``data convert``
reads) is never trained on: it is converted to its own cache and evaluated whole. MAE units:
energy meV/atom, forces meV/Å, stress GPa, magnetic moments μB; a target the frames lack is
shown as "-". The table is printed and written to ``<run.out_dir>/finetune-report.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fastchgnet.train.cache_sources import resolve_cache
from fastchgnet.train.config import TrainConfig
from fastchgnet.train.loading import (
    EpochBatches,
    Splits,
    make_loader,
    make_sampler,
    make_splits,
)
from fastchgnet.train.metrics import REPORTED, format_table, write_csv
from fastchgnet.train.model_setup import build_model


@dataclass
class FinetuneReport:
    """Metrics (``MetricSums.results`` dicts) per row: "held-out before", "held-out after",
    then "<source> before" / "<source> after" for every evaluation-only source; the number of
    frames trained on and held out."""

    rows: dict[str, dict[str, float]]
    n_train: int
    n_heldout: int

    def table(self) -> str:
        """The rows as ``format_table`` prints them."""
        return format_table(self.rows)


def evaluate_indices(
    model: torch.nn.Module, splits: Splits, indices: np.ndarray, config: TrainConfig
) -> dict[str, float]:
    """MAE and R² of ``model`` on the dataset entries ``indices`` (one process), on the GPU
    where there is one (the model is moved there: models load onto the CPU; the batches come
    in pinned memory there, so their copies overlap the evaluation, as in training)."""
    from fastchgnet.train.loop import evaluate
    from fastchgnet.train.run import device_type

    if len(indices) == 0:
        return {}
    device = torch.device(device_type())
    model.to(device)
    sampler = make_sampler(splits, indices, config.data, (0, 1), 0)
    batches = make_loader(splits, EpochBatches(sampler, indices, 0, ahead=False), 0, device=device)
    return evaluate(model, batches, device).results()


def heldout(splits: Splits) -> np.ndarray:
    """(n,) dataset indices of the frames not trained on: the val and test splits."""
    return np.sort(np.concatenate([splits.val, splits.test]))


def source_splits(source: str, config: TrainConfig, cutoffs: tuple[float, float]) -> Splits:
    """An evaluation-only source converted to ``<run.out_dir>/eval-<name>`` and opened whole
    (every frame in ``Splits.train``; nothing is trained on it)."""
    out = Path(config.run.out_dir)
    name = Path(source).name.split(".")[0]
    data = replace(config.data, source=source, cache_dir=str(out / f"eval-{name}"))
    cache = resolve_cache(data, out, cutoffs, is_main=True)
    opened = make_splits(cache, replace(data, split=(1.0, 0.0, 0.0), split_by="material"))
    everything = np.arange(len(opened.dataset), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    return Splits(opened.dataset, everything, empty, empty)


def finetune(
    config: TrainConfig, eval_sources: tuple[str, ...] = (), resume: bool = False
) -> FinetuneReport:
    """Evaluate the starting model, train ``config`` (``run.train``; from the newest
    checkpoint where ``resume``), evaluate the result; the report replaces
    ``finetune-report.csv``."""
    from fastchgnet.model.chgnet import FastCHGNet
    from fastchgnet.train.run import train

    for source in eval_sources:  # before the training data is converted
        if not Path(source).exists():
            raise FileNotFoundError(f"--eval {source}: no such file or directory")
    out = Path(config.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    start = build_model(config.model, config.run.seed)
    cutoffs = (start.config.atom_cutoff, start.config.bond_cutoff)
    splits = make_splits(resolve_cache(config.data, out, cutoffs, is_main=True), config.data)
    held = heldout(splits)
    others = {Path(s).name.split(".")[0]: source_splits(s, config, cutoffs) for s in eval_sources}
    rows = {"held-out before": evaluate_indices(start, splits, held, config)}
    for name, other in others.items():
        rows[f"{name} before"] = evaluate_indices(start, other, other.train, config)
    train(config, resume=resume)
    tuned = FastCHGNet.load(out / "model.pt")
    rows["held-out after"] = evaluate_indices(tuned, splits, held, config)
    for name, other in others.items():
        rows[f"{name} after"] = evaluate_indices(tuned, other, other.train, config)
    order = ["held-out before", "held-out after"]
    for name in others:
        order += [f"{name} before", f"{name} after"]
    report = FinetuneReport({k: rows[k] for k in order}, len(splits.train), len(held))
    rows = []
    for name, results in report.rows.items():
        row: dict[str, object] = {"rows": name}
        for target in REPORTED:
            row[f"{target}_mae"] = results.get(f"{target}_mae", float("nan"))
            row[f"{target}_r2"] = results.get(f"{target}_r2", float("nan"))
        rows.append(row)
    write_csv(out / "finetune-report.csv", rows)
    return report
