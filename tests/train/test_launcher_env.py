"""Which launcher started this process, read before any process group exists: torchrun's and
DeepSpeed's RANK / WORLD_SIZE, else an MPI launcher's own variables (``deepspeed --launcher
openmpi``, mpirun), which DeepSpeed turns into RANK / WORLD_SIZE only later."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.train import collectives
from fastchgnet.train.collectives import LAUNCHER_VARIABLES
from fastchgnet.train.engine import launched_distributed, launcher_rank_and_world


@pytest.fixture
def no_launcher(monkeypatch):
    """No launcher variable set; whatever the test (or the code it runs: an MPI discovery,
    the LOCAL_RANK rewrite) sets is undone after it (a WORLD_SIZE left behind made a later
    test's training wait for a process group). Set first so that the undo removes them."""
    names = {name for group in LAUNCHER_VARIABLES for name in group}
    for name in sorted(names | set(collectives.TORCH_LAUNCH_VARIABLES)):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_one_process_without_a_launcher(no_launcher):
    assert launcher_rank_and_world() == (0, 1)
    assert not launched_distributed()


@pytest.mark.parametrize(
    ("rank", "world"),
    [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
     ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE")],
)  # fmt: skip
def test_an_mpi_launchers_ranks_know_they_are_several(no_launcher, rank, world):
    """Before, only WORLD_SIZE was read: each MPI rank trained alone, and every one of them
    took itself for rank 0 (removing the run folder's outputs on --overwrite)."""
    no_launcher.setenv(rank, "3")
    no_launcher.setenv(world, "4")
    assert launcher_rank_and_world() == (3, 4)
    assert launched_distributed()


def test_torchrun_and_deepspeeds_variables_come_first(no_launcher):
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    no_launcher.setenv("OMPI_COMM_WORLD_RANK", "0")
    no_launcher.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert launcher_rank_and_world() == (1, 2)


def test_an_mpi_ranks_gpu_comes_from_its_local_rank(no_launcher):
    """Under MPI LOCAL_RANK is not set yet: the local rank is Open MPI's (modulo the GPUs a
    scheduler shows the rank), and the variable is rewritten for DeepSpeed to read."""
    no_launcher.setattr(torch.cuda, "device_count", lambda: 2)
    no_launcher.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert collectives.local_device() == 1
    import os

    assert os.environ["OMPI_COMM_WORLD_LOCAL_RANK"] == "1"


def test_nccl_starts_on_the_ranks_own_gpu_under_mpi(no_launcher):
    """DeepSpeed's MPI discovery, run inside init_distributed, set LOCAL_RANK=2 (host names,
    unwrapped) and then started NCCL with device_id cuda:2 in a rank shown one GPU (and its
    engine took device 2 of 1; Open MPI asserted LOCAL_RANK == OMPI_COMM_WORLD_LOCAL_RANK):
    the discovery now runs first and LOCAL_RANK is the rank's own device when the group
    starts."""
    import os
    import sys
    import types

    current, seen = [], []
    no_launcher.setattr(torch.cuda, "is_available", lambda: True)
    no_launcher.setattr(torch.cuda, "device_count", lambda: 1)
    no_launcher.setattr(torch.cuda, "set_device", current.append)
    no_launcher.setattr(torch.cuda, "current_device", lambda: current[-1])
    no_launcher.setattr(collectives, "install", lambda *args: None)

    def discovery(**kwargs):  # deepspeed.comm.comm.mpi_discovery's effect on a rank
        for name, value in (("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "2")):
            os.environ[name] = value
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "10.0.0.1", "29500"

    def init_distributed(**kwargs):  # DeepSpeed: discovery only if a variable is missing
        if not all(name in os.environ for name in collectives.TORCH_LAUNCH_VARIABLES):
            discovery()
        seen.append(os.environ["LOCAL_RANK"])  # its NCCL device_id

    comm = types.ModuleType("deepspeed.comm.comm")
    comm.mpi_discovery = discovery
    fake = types.ModuleType("deepspeed")
    fake.init_distributed = init_distributed
    no_launcher.setitem(sys.modules, "deepspeed", fake)
    no_launcher.setitem(sys.modules, "deepspeed.comm", types.ModuleType("deepspeed.comm"))
    no_launcher.setitem(sys.modules, "deepspeed.comm.comm", comm)
    no_launcher.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2")
    collectives.init_process_group(60.0)
    assert seen == ["0"]
    assert current == [0]
    assert os.environ["LOCAL_RANK"] == os.environ["OMPI_COMM_WORLD_LOCAL_RANK"] == "0"


def test_a_hydra_ranks_gpu_comes_from_its_local_rank(no_launcher):
    no_launcher.setattr(torch.cuda, "device_count", lambda: 4)
    no_launcher.setenv("MPI_LOCALRANKID", "2")
    assert collectives.local_device() == 2


def test_settle_hands_rank_0s_outcome_to_the_other_ranks(tmp_path):
    collectives.settle(tmp_path, 0, 5.0, "data-ok", None)
    collectives.settle(tmp_path, 1, 5.0, "data-ok", None)  # rank 0 succeeded: no error
    collectives.settle(tmp_path, 0, 5.0, "data-bad", "f.extxyz: no such file or directory")
    with pytest.raises(ValueError, match=r"^rank 0 stopped: f\.extxyz: no such file"):
        collectives.settle(tmp_path, 1, 5.0, "data-bad", None)


def test_groups_made_after_the_start_take_the_runs_timeout(monkeypatch):
    """DeepSpeed's data-parallel group (its gradient all-reduce) is a new_group without a
    timeout: it waited torch's 30 minutes on a stopped rank, whatever run.dist_timeout_s said."""
    import datetime

    import torch.distributed.distributed_c10d as c10d

    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        monkeypatch.setattr(c10d, name, getattr(c10d, name), raising=False)
    collectives.bound_new_groups(datetime.timedelta(seconds=42))
    assert c10d._get_default_timeout("gloo") == datetime.timedelta(seconds=42)
