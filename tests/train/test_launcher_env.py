"""Which launcher started this process, read before any process group exists: torchrun's and
DeepSpeed's RANK / WORLD_SIZE, else an MPI launcher's own variables (``deepspeed --launcher
openmpi``, mpirun), which DeepSpeed turns into RANK / WORLD_SIZE only later."""

from __future__ import annotations

import pytest
import torch

from fastchgnet.train import collectives
from fastchgnet.train.launchers import (
    LAUNCHER_VARIABLES,
    launched_distributed,
    launcher_rank_and_world,
)


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

    # a PMI launch without a local rank (Slurm's pmi2): the discovery's host-name count picks
    # the GPU (before, GPU 0 for every rank of a node, the discovery's answer written over)
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", *collectives.TORCH_LAUNCH_VARIABLES):
        no_launcher.delenv(name, raising=False)
    no_launcher.setenv("PMI_RANK", "2")
    no_launcher.setenv("PMI_SIZE", "4")
    no_launcher.setattr(torch.cuda, "device_count", lambda: 4)
    seen.clear()
    current.clear()
    collectives.init_process_group(60.0)
    assert current[-1] == 2
    assert seen == ["2"]
    assert os.environ["LOCAL_RANK"] == "2"


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


def _slurm_task(monkeypatch, rank: int, tasks: int, **more: str) -> None:
    """The variables srun gives task ``rank`` of a ``tasks``-task step on one node."""
    names = {
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_NTASKS": str(tasks),
        "SLURM_STEP_NODELIST": "gpu[07-09,12],cpu1",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "5",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2),3",
        "SLURM_NODEID": "0",
        **more,
    }
    for name, value in names.items():
        monkeypatch.setenv(name, value)


def test_srun_tasks_know_they_are_several_and_get_the_torch_variables(no_launcher):
    """srun (and ``deepspeed --launcher slurm``) sets no RANK / WORLD_SIZE: every task trained
    alone on GPU 0, or stopped at the run lock."""
    import os

    from fastchgnet.train.launchers import ranks_on_this_node, slurm_torch_variables

    _slurm_task(no_launcher, 3, 11, SLURM_LOCALID="3", SLURM_NODEID="2")
    assert launcher_rank_and_world() == (3, 11)
    assert launched_distributed()
    assert ranks_on_this_node() == 3  # the third node's share of "4(x2),3"
    slurm_torch_variables()
    torch_variables = {name: os.environ[name] for name in collectives.TORCH_LAUNCH_VARIABLES}
    assert torch_variables == {
        "RANK": "3",
        "WORLD_SIZE": "11",
        "LOCAL_RANK": "3",
        "MASTER_ADDR": "gpu07",  # the step's first node, where task 0 runs
        "MASTER_PORT": str(15000 + (4242 + 97 * 5) % 20000),
    }


def test_slurm_leaves_a_launchers_own_variables_and_a_batch_script_alone(no_launcher):
    import os

    from fastchgnet.train.launchers import slurm_torch_variables

    _slurm_task(no_launcher, 1, 2)  # ``srun torchrun ...``: torchrun's come first
    for name, value in (("RANK", "5"), ("WORLD_SIZE", "8"), ("MASTER_PORT", "29400")):
        no_launcher.setenv(name, value)
    slurm_torch_variables()
    assert (os.environ["RANK"], os.environ["MASTER_PORT"]) == ("5", "29400")
    assert launcher_rank_and_world() == (5, 8)
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT", "SLURM_STEP_NUM_TASKS"):
        no_launcher.delenv(name)
    # a plain ``python`` in an ``sbatch --ntasks=8`` script: the job's task count, no step's
    no_launcher.setenv("SLURM_NTASKS", "8")
    assert launcher_rank_and_world() == (0, 1)
    slurm_torch_variables()
    assert "RANK" not in os.environ


@pytest.mark.parametrize(
    ("text", "counts"), [("4(x2),3", [4, 4, 3]), ("8", [8]), ("2(x3)", [2, 2, 2])]
)
def test_slurms_tasks_per_node_are_expanded(text, counts):
    from fastchgnet.train.launchers import slurm_counts

    assert slurm_counts(text) == counts
    with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE"):
        slurm_counts("4(x)")


@pytest.mark.parametrize(
    ("nodes", "host"),
    [("gpu[07-09,12],cpu1", "gpu07"), ("node3", "node3"), ("a-1,b", "a-1"), ("n[1,5]", "n1")],
)
def test_rank_0s_host_is_the_first_of_slurms_node_list(nodes, host):
    from fastchgnet.train.launchers import first_host

    assert first_host(nodes) == host
