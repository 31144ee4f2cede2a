"""Training data: split the graph cache (``train.cache_sources`` resolves the source to it) and
feed each rank its batches.

The cache, the split and the per-rank plans come from ``fastchgnet.data``; this module composes
them for the training loop and adds starting an epoch part-way (exact resume)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from fastchgnet.compile.background import usable_cores
from fastchgnet.data.batch import GraphBatch, collate
from fastchgnet.data.cache import GraphDataset
from fastchgnet.data.capacity import Capacity, Counts, fitted, packing_capacity
from fastchgnet.data.labels import LabelBatch, collate_labels
from fastchgnet.data.packing import PackedBatchSampler
from fastchgnet.data.padding import PADDING_ONLY, collate_padded
from fastchgnet.data.sampler import BalancedBatchSampler, structure_costs
from fastchgnet.data.split import split_by_frame_tail, split_by_material, split_by_tag
from fastchgnet.signals import quiet_child
from fastchgnet.train.config import DataConfig
from fastchgnet.train.launchers import LOCAL_SIZE_VARIABLES, ranks_on_this_node
from fastchgnet.train.replay import replayed_mask

#: The bundled quick-start set (fastchgnet/resources), made by ``fastchgnet data synth``.
QUICKSTART_FILE = "quickstart.extxyz.gz"


def quickstart_path() -> Path:
    """Path of the bundled quick-start frames (extxyz, labels from CHGNet 0.3.0)."""
    return Path(str(resources.files("fastchgnet") / "resources" / QUICKSTART_FILE))


def collate_items(
    items: Sequence[tuple[object, object]], dtype: torch.dtype = torch.float32
) -> tuple[GraphBatch, LabelBatch]:
    """``GraphDataset`` items -> (GraphBatch, LabelBatch), structures in the same order; no
    items (a rank with no structure left for this step) -> a padding-only batch
    (``padding.PADDING_ONLY``: every label masked, zero loss and gradient)."""
    if not items:
        return PaddedCollate(PADDING_ONLY, dtype)(items)
    graphs = [graph for graph, _ in items]
    labels = [label for _, label in items]
    return collate(graphs, dtype), collate_labels(labels, [g.n_atoms for g in graphs], dtype)


@dataclass(frozen=True)
class PaddedCollate:
    """``GraphDataset`` items -> (GraphBatch, LabelBatch) padded to ``capacity`` (the real
    structures first, then empty slots and the padding dummy, whose labels are masked; no
    items: padding only, the same shape). With ``fit`` (a captured step with dynamic sizes,
    ``compile.CapturedModel(dynamic=True)``) only structures and short bonds are padded to
    ``capacity``; atoms, long bonds and angles take the batch's own (``capacity.fitted``)."""

    capacity: Capacity
    dtype: torch.dtype = torch.float32
    fit: bool = False

    def __call__(self, items: Sequence[tuple[object, object]]) -> tuple[GraphBatch, LabelBatch]:
        graphs = [graph for graph, _ in items]
        labels = [label for _, label in items]
        capacity = fitted(self.capacity, Counts.of(graphs)) if self.fit else self.capacity
        batch, labels = collate_padded(graphs, capacity, labels, self.dtype)
        assert labels is not None
        return batch, labels


@dataclass
class Splits:
    """The dataset and the indices of each split (int64 arrays); ``replayed``: how many of
    the training structures are replayed base frames (``data.replay_source``)."""

    dataset: GraphDataset
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    replayed: int = 0


def make_splits(cache: Path, config: DataConfig) -> Splits:
    """Open the cache and split it: by material id (``config.split``, ``split_seed``), by
    frame position within each material (``split_by="frame_tail"``), or by the frames' split
    tags when the splits came from separate files (``config.explicit``). ``max_structures``
    keeps the first that many of the source's structures; replayed frames (tagged) all join
    train, on top, never val or test."""
    dataset = GraphDataset(cache)
    ids = dataset.frame_ids if config.explicit else dataset.material_ids
    replayed = replayed_mask(dataset.frame_ids)
    own = np.flatnonzero(~replayed)
    if config.max_structures > 0:
        own = own[: config.max_structures]
    if config.explicit:
        split = split_by_tag(ids[own])
    elif config.split_by == "frame_tail":
        split = split_by_frame_tail(ids[own], config.split)
    else:
        split = split_by_material(ids[own], config.split, seed=config.split_seed)
    train = np.sort(np.concatenate([own[split.train], np.flatnonzero(replayed)]))
    test = own[split.test]
    return Splits(dataset, train.astype(np.int64), own[split.val], test, int(replayed.sum()))


class EpochBatches(Sampler[list[int]]):
    """One rank's batches of one epoch from a ``BalancedBatchSampler`` or
    ``PackedBatchSampler``, starting at ``skip`` global steps into the epoch (resume), mapped
    from split positions to dataset indices.

    Once the epoch's first batch is handed out, the sampler starts building the next epoch's
    plan in the background (``plan_ahead``; off with ``ahead=False``, e.g. for evaluation,
    which always uses epoch 0, and in the last of ``epochs``, whose next plan nothing would
    use), so the next ``set_epoch`` finds it ready. One
    ``DataLoader`` over this object serves every epoch: call ``set_epoch`` and iterate the
    loader again (its workers persist).
    """

    def __init__(
        self,
        sampler: BalancedBatchSampler | PackedBatchSampler,
        indices: np.ndarray,
        epoch: int,
        skip: int = 0,
        ahead: bool = True,
        epochs: int | None = None,
    ) -> None:
        self.sampler, self.indices, self.ahead, self.epochs = sampler, indices, ahead, epochs
        self.set_epoch(epoch, skip)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Follow ``epoch``'s plan from global step ``skip`` on."""
        self.epoch, self.skip = int(epoch), skip
        self.sampler.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[list[int]]:
        plan, rank = self.sampler.plan(), self.sampler.rank
        for position, step in enumerate(plan[self.skip :]):
            yield [int(self.indices[k]) for k in step[rank]]
            upcoming = self.epoch + 1
            if position == 0 and self.ahead and (self.epochs is None or upcoming < self.epochs):
                self.sampler.plan_ahead(upcoming)  # after the loader's workers started (no
                # fork while a thread runs)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def make_sampler(
    splits: Splits,
    indices: np.ndarray,
    config: DataConfig,
    world: tuple[int, int],
    seed: int,
    packed: bool = False,
) -> BalancedBatchSampler | PackedBatchSampler:
    """Sampler over ``indices`` of the dataset for (rank, world_size): balanced (a fixed
    number of structures per rank batch) or, with ``packed``, every rank batch filled to one
    capacity (``packing_capacity``: ``config.batch_size`` structures on average)."""
    rank, world_size = world
    if packed:
        sizes, capacity = packing_inputs(splits, indices, config.batch_size)
        return PackedBatchSampler(sizes, capacity, world_size=world_size, rank=rank, seed=seed)
    costs = structure_costs(splits.dataset.sizes[indices])
    return BalancedBatchSampler(
        costs,
        config.batch_size,
        world_size=world_size,
        rank=rank,
        seed=seed,
        size_pool=config.size_pool if config.size_pool > 0 else None,
    )


def packing_inputs(
    splits: Splits, indices: np.ndarray, batch_size: int
) -> tuple[np.ndarray, Capacity]:
    """What packing ``indices`` of the dataset needs: sizes (N, 4) atoms, bonds, angles,
    bond-graph bonds (those get their own slots: the bond convolutions run on them only) and
    the one capacity (``packing_capacity``: ``batch_size`` structures on average)."""
    sizes = np.concatenate(
        [splits.dataset.sizes[indices], splits.dataset.short_bonds[indices, None]], axis=1
    )
    return sizes, packing_capacity(sizes, batch_size)


def loader_workers(requested: int, device: torch.device | str) -> int:
    """DataLoader worker processes per rank: ``requested`` when >= 0; for -1 ("auto") none on
    a CPU (the step uses the cores) and on CUDA ``min(4, cores per local rank)``, collating
    ahead of the GPU: the cores this process may run on, shared by the ranks a launcher
    started on the node, or the rank's own where a scheduler bound it (srun's tasks)."""
    if requested < 0 and torch.device(device).type == "cuda":
        cores, launched = usable_cores(), any(n in os.environ for n in LOCAL_SIZE_VARIABLES)
        shared = launched or cores >= (os.cpu_count() or 1)  # else the binding is the rank's
        return min(4, max(1, cores // ranks_on_this_node() if shared else cores))
    return max(requested, 0)


def make_loader(
    splits: Splits,
    batches: Sampler[list[int]],
    workers: int,
    capacity: Capacity | None = None,
    device: torch.device | str = "cpu",
    fit: bool = False,
) -> DataLoader:
    """DataLoader yielding (GraphBatch, LabelBatch) for the given batch sampler, padded to
    ``capacity`` when given (``fit``: to each batch's own sizes within it, ``PaddedCollate``).

    ``workers``: processes collating batches (-1: ``loader_workers``' automatic choice for
    ``device``); they persist across epochs when the same loader is iterated again (give it an
    ``EpochBatches`` and call its ``set_epoch``). On CUDA the batches come in pinned memory,
    so ``DevicePrefetcher`` copies them asynchronously.
    """
    workers = loader_workers(workers, device)
    return DataLoader(
        splits.dataset,
        batch_sampler=batches,
        collate_fn=collate_items if capacity is None else PaddedCollate(capacity, fit=fit),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=_quiet_worker if workers > 0 else None,
    )


def close_loader(loader: object) -> None:
    """End ``loader``'s persistent workers now (its shutdown asks them; one still alive is
    killed): they ignore SIGTERM (``_quiet_worker``), and a loader left to Python's exit,
    which terminates then joins them, hung the process after its run had ended."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    iterator._shutdown_workers()
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join()
    loader._iterator = None  # type: ignore[attr-defined]


def _quiet_worker(worker_id: int) -> None:
    """A loader worker's start: SIGINT and SIGTERM are ignored there (``signals.quiet_child``),
    so a signal to the whole process group (Ctrl-C, a scheduler's SIGTERM) reaches the run's
    handler (``train.interrupt``) without killing the workers mid-step (``close_loader``)."""
    quiet_child(ignore_sigterm=True)


def composition_fractions(
    dataset: GraphDataset, indices: np.ndarray, n_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, n_elements) atom fractions and (n,) energies (eV/atom) of the labelled structures
    among ``indices``, for ``AtomRef.fit``."""
    rows, energies = [], []
    for index in indices:
        graph, labels = dataset[int(index)]
        if labels.energy_per_atom is None:
            continue
        counts = np.bincount(graph.atomic_numbers - 1, minlength=n_elements)[:n_elements]
        rows.append(counts / counts.sum())
        energies.append(labels.energy_per_atom)
    return torch.tensor(np.array(rows)), torch.tensor(np.array(energies))


def check_energy_labels(
    dataset: GraphDataset, indices: np.ndarray, cache: Path, required: bool
) -> None:
    """When no structure among ``indices`` has an energy label: a ValueError (one line,
    naming ``cache``) where ``required`` (a new model's composition fit needs energies), else
    a printed warning (a fine-tune may train on forces alone)."""
    if not len(indices) or dataset.label_mask[np.asarray(indices, dtype=np.int64), 0].any():
        return
    problem = (
        f"{cache}: no training structure has an energy label (convert with --labels / "
        "data.labels, or data.energy_key)"
    )
    if required:
        raise ValueError(problem)
    print(f"warning: {problem}: training on the other labels alone", flush=True)
