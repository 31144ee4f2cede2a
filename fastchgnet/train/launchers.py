"""Which launcher started this process, read from its environment before any process group
exists: torchrun's and DeepSpeed's RANK / WORLD_SIZE / LOCAL_RANK, else an MPI launcher's own
variables (which DeepSpeed's ``init_distributed`` turns into those), else a Slurm step's.

Slurm: ``srun python launcher/train.py`` (and ``deepspeed --launcher slurm``, which runs that)
starts each task with Slurm's variables only. ``slurm_torch_variables`` sets the torch ones
from them before the process group starts: the rank and local rank of the task, the step's
task count, and rank 0's host (the first node of the step's node list, where a block
distribution puts task 0) with a port derived from the job and step ids, unless MASTER_ADDR /
MASTER_PORT are set. No torch import here: the command line reads these before it loads
anything.
"""

from __future__ import annotations

import os
import re

#: torchrun's and DeepSpeed's launcher's (rank, world size, local rank) variables
TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: those of MPI launchers (``deepspeed --launcher openmpi|mvapich``, mpirun; MPICH's and Intel
#: MPI's Hydra: PMI_*, MPI_LOCALRANKID), which set no RANK / WORLD_SIZE / LOCAL_RANK until
#: DeepSpeed's ``init_distributed`` reads theirs
MPI_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)
#: a Slurm job step's (srun's): its task count, not the job's SLURM_NTASKS, which a plain
#: ``python`` in an ``sbatch --ntasks=8`` script also sees
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")
#: every launcher's (rank, world size, local rank) variables, in the order read
LAUNCHER_VARIABLES = (TORCH_VARIABLES, *MPI_VARIABLES, SLURM_VARIABLES)

#: ranks-per-node variables of the launchers: torchrun's, DeepSpeed's launcher's (which sets
#: no LOCAL_WORLD_SIZE: each of 8 ranks took min(4, all cores) workers), Open MPI's, MVAPICH's,
#: Hydra's (Slurm's, a per-node list, is read by ``ranks_on_this_node``)
LOCAL_SIZE_VARIABLES = (
    "LOCAL_WORLD_SIZE",
    "LOCAL_SIZE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
)
#: MASTER_PORT of a Slurm step that sets none: this plus (the job id + 97 x the step id) modulo
#: ``SLURM_PORT_SPAN`` (two jobs or steps sharing a node rarely collide; set MASTER_PORT where
#: they do)
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 20000


def launcher_rank_and_world() -> tuple[int, int]:
    """(rank, world size) as the launcher that started this process set them, before any
    process group exists (``LAUNCHER_VARIABLES``); (0, 1) without a launcher."""
    for rank, world, _ in LAUNCHER_VARIABLES:
        if world in os.environ:
            return int(os.environ.get(rank, "0")), int(os.environ[world])
    return 0, 1


def launched_distributed() -> bool:
    """True when a launcher (deepspeed, torchrun, an MPI launcher, srun) started this process
    as one of several."""
    return launcher_rank_and_world()[1] > 1


def echo_of_rank_0() -> bool:
    """True for a rank other than 0 that the launcher numbered as if on rank 0's node (its
    rank equals its local rank, as every launcher's default numbering gives there): it reads
    the arguments and files rank 0 reads, so a problem with them is rank 0's as well, and
    is printed once, by rank 0. False without a launcher, on rank 0, and elsewhere."""
    for rank, world, local in LAUNCHER_VARIABLES:
        if world in os.environ:
            number = os.environ.get(rank, "0")
            return number != "0" and os.environ.get(local) == number
    return False


def ranks_on_this_node() -> int:
    """How many ranks the launcher started on this node (1 without a launcher)."""
    size = next((os.environ[name] for name in LOCAL_SIZE_VARIABLES if name in os.environ), None)
    if size is None and "SLURM_STEP_TASKS_PER_NODE" in os.environ:
        counts = slurm_counts(os.environ["SLURM_STEP_TASKS_PER_NODE"])
        node = int(os.environ.get("SLURM_NODEID", "0"))
        size = str(counts[node] if node < len(counts) else counts[-1])
    return max(1, int(size or "1"))


def slurm_counts(text: str) -> list[int]:
    """Slurm's per-node task counts ("4(x2),3": two nodes of 4 tasks, then one of 3) as a list:
    [4, 4, 3]."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE={text!r}: not Slurm's N(xM),... form")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "gpu[07-09,12],cpu1" -> "gpu07"."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if match is None:
        raise ValueError(f"Slurm node list {nodelist!r}: no host name in it")
    return match[1] + (match[2] or "")


def slurm_torch_variables() -> None:
    """Where only a Slurm step says this process is one of several (no torch or MPI launcher
    variable), set RANK, WORLD_SIZE, LOCAL_RANK and, where not set, MASTER_ADDR and
    MASTER_PORT from it (see the module docstring); elsewhere nothing changes."""
    if any(world in os.environ for _, world, _ in (TORCH_VARIABLES, *MPI_VARIABLES)):
        return
    rank, world, local = SLURM_VARIABLES
    if int(os.environ.get(world, "1")) < 2:
        return
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodes and "MASTER_ADDR" not in os.environ:
        raise ValueError(
            "a Slurm step of several tasks without SLURM_STEP_NODELIST: set MASTER_ADDR to "
            "the host of task 0"
        )
    os.environ.setdefault("MASTER_ADDR", first_host(nodes or ""))
    # the job and step ids: two steps of one allocation (``srun ... &``) take two ports
    job = int(os.environ.get("SLURM_JOB_ID", "0")) + 97 * int(os.environ.get("SLURM_STEP_ID", "0"))
    os.environ.setdefault("MASTER_PORT", str(SLURM_PORT_BASE + job % SLURM_PORT_SPAN))
    os.environ["RANK"], os.environ["WORLD_SIZE"] = os.environ[rank], os.environ[world]
    os.environ["LOCAL_RANK"] = os.environ.get(local, "0")
