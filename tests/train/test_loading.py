"""make_loader: worker count (auto on CPU / GPU), persistent workers, pinned memory on CUDA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from fastchgnet.train.loading import loader_workers, make_loader


def test_auto_workers_are_none_on_cpu_and_a_few_on_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(-1, "cpu") == 0
    assert 1 <= loader_workers(-1, torch.device("cuda")) <= 4
    assert loader_workers(3, "cuda") == 3
    assert loader_workers(0, "cuda") == 0


def test_auto_workers_share_the_cores_among_local_ranks(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers(-1, "cuda") == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert loader_workers(-1, "cuda") == 1


def test_auto_workers_fit_the_cores_a_scheduler_bound_the_rank_to(monkeypatch):
    # os.cpu_count() is the node's: under Slurm --cpus-per-task=2 each of 8 srun tasks took 4
    # workers of its 2 cores
    from fastchgnet.train.launchers import LOCAL_SIZE_VARIABLES

    for name in LOCAL_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {8, 9}, raising=False)
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "8")
    assert loader_workers(-1, "cuda") == 2
    # 8 ranks a launcher started inside one 16-core binding share it
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers(-1, "cuda") == 2


@pytest.mark.parametrize(
    "variable", ["LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
)
def test_auto_workers_share_the_cores_under_deepspeed_and_mpi_launchers(monkeypatch, variable):
    """DeepSpeed's launcher sets LOCAL_SIZE, not torchrun's LOCAL_WORLD_SIZE: each of 8 ranks
    on a 16-core node took 4 workers (32 processes, with the ranks and their pin threads)."""
    from fastchgnet.train.launchers import LOCAL_SIZE_VARIABLES

    for name in LOCAL_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv(variable, "8")
    assert loader_workers(-1, "cuda") == 2


def test_loader_workers_persist_and_batches_are_pinned_only_for_cuda():
    splits = SimpleNamespace(dataset=list(range(8)))
    batches = BatchSampler(SequentialSampler(range(8)), 2, drop_last=False)
    cpu = make_loader(splits, batches, -1, device="cpu")
    assert cpu.num_workers == 0
    assert not cpu.pin_memory
    gpu = make_loader(splits, batches, 2, device="cuda")
    assert gpu.num_workers == 2
    assert gpu.persistent_workers
    assert gpu.pin_memory


def test_loader_workers_outlive_a_sigterm_sent_to_the_process_group():
    """A batch scheduler's SIGTERM reaches every process of the group: the workers ignore it
    (the training process's handler stops the run with a checkpoint); before, it killed them
    and the next batch raised 'DataLoader worker ... is killed by signal'."""
    import os
    import signal

    splits = SimpleNamespace(dataset=list(range(8)))
    batches = BatchSampler(SequentialSampler(range(8)), 2, drop_last=False)
    loader = make_loader(splits, batches, 1, device="cpu")
    loader.collate_fn = list  # the items as they are: no graphs here
    batch_iterator = iter(loader)
    assert next(batch_iterator) == [0, 1]
    for worker in batch_iterator._workers:
        os.kill(worker.pid, signal.SIGTERM)
    assert [batch for batch in batch_iterator] == [[2, 3], [4, 5], [6, 7]]
