"""The one place that talks to ``torch.distributed``: process group, collectives, rank liveness.

Every collective the package makes goes through this module (a test reads the sources and fails
on any other use of torch.distributed). Each one first puts its tensor on the device the group
was created for: the rank's CUDA device under NCCL (a CPU tensor has no NCCL backend), the CPU
under gloo. Results come back on the caller's device. Without a process group every function is
the single-process identity, so callers need no ``if distributed`` branches.

Bounded failure: the group is created with a timeout (``run.dist_timeout_s``), and each rank
records its pid and host under ``<out_dir>/ranks/``; when a collective fails or the launcher
stops the survivors, ``peer_report`` names the ranks whose processes are gone.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
import torch.distributed as _torch_dist
from torch import Tensor

from fastchgnet.files import write_json_atomic
from fastchgnet.train.launchers import LAUNCHER_VARIABLES, MPI_VARIABLES, slurm_torch_variables

#: the torch.distributed module in use (tests install a recording stand-in with ``install``)
_dist: ModuleType | Any = _torch_dist
#: the device of the process group's tensors, set when the group is created
_device: torch.device | None = None

ReduceOp = Literal["sum", "min", "max"]


def install(dist_module: Any, device: torch.device) -> None:
    """Use ``dist_module`` (torch.distributed or a stand-in) whose group lives on ``device``."""
    global _dist, _device
    _dist, _device = dist_module, torch.device(device)


def initialized() -> bool:
    """True inside a process group of several (or one) ranks."""
    return bool(_dist.is_available() and _dist.is_initialized())


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if not initialized():
        return 0, 1
    return int(_dist.get_rank()), int(_dist.get_world_size())


def group_device() -> torch.device:
    """The device collectives run on: the rank's CUDA device under NCCL, else the CPU."""
    if _device is not None:
        return _device
    if initialized() and _dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(timeout_s: float) -> None:
    """Start the process group through DeepSpeed: NCCL on the rank's GPU when CUDA is
    available (``local_device``), gloo on CPU; a collective that waits longer than
    ``timeout_s`` seconds fails instead of hanging."""
    import deepspeed
    import torch.distributed.nn  # before the group exists: see leave_process_group

    slurm_torch_variables()  # srun's tasks: the torch variables from Slurm's
    cuda = torch.cuda.is_available()
    if cuda:
        known_local = any(local in os.environ for _, _, local in LAUNCHER_VARIABLES)
        torch.cuda.set_device(local_device())
        if _mpi_without_torch_variables():
            # DeepSpeed's MPI discovery inside init_distributed would set LOCAL_RANK from
            # host names, unwrapped, and start NCCL on that device (``device_id``): cuda:2 in
            # a rank shown one GPU. Discovered here first, LOCAL_RANK is the rank's own GPU.
            from deepspeed.comm.comm import mpi_discovery

            mpi_discovery(verbose=False)
            if not known_local:  # a PMI launch without MPI_LOCALRANKID: the discovery's count
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
            os.environ["LOCAL_RANK"] = str(torch.cuda.current_device())
    timeout = datetime.timedelta(seconds=timeout_s)
    bound_new_groups(timeout)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timeout)
    if cuda:  # under MPI, DeepSpeed's discovery (mpi4py) set LOCAL_RANK from host names,
        # unwrapped: where a rank sees only its own GPU its engine would take device 2 of 1
        for name in {"LOCAL_RANK", *(local for _, _, local in LAUNCHER_VARIABLES)}:
            if name in os.environ:
                os.environ[name] = str(torch.cuda.current_device())
    install(_torch_dist, torch.device("cuda", torch.cuda.current_device()) if cuda else "cpu")
    if not cuda:
        release_shared_memory_name()


#: what DeepSpeed's ``init_distributed`` needs before it skips its own MPI discovery
TORCH_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def _mpi_without_torch_variables() -> bool:
    """Whether an MPI launcher started this rank and the torch launch variables are not all
    set (DeepSpeed would run its MPI discovery)."""
    mpi = any(name in os.environ for names in MPI_VARIABLES for name in names)
    return mpi and not all(name in os.environ for name in TORCH_LAUNCH_VARIABLES)


def bound_new_groups(timeout: datetime.timedelta) -> None:
    """Give every process group made after this call ``timeout``: DeepSpeed's engine makes its
    data-parallel group (``new_group``, where its gradient all-reduce runs) without one, so it
    took torch's 30-minute default, not ``run.dist_timeout_s`` (a stopped rank held the other
    30 minutes in its backward)."""
    c10d = _torch_dist.distributed_c10d
    c10d.default_pg_timeout = timeout
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), datetime.timedelta):
        c10d.default_pg_nccl_timeout = timeout  # a CUDA build's NCCL default


def local_device() -> int:
    """The rank's CUDA device index: ``LOCAL_RANK`` modulo the devices this process sees (a
    scheduler that shows each rank only its own GPU makes that device 0). DeepSpeed reads
    ``LOCAL_RANK`` again (the process group's ``device_id``, its engine's device), so the
    variable is rewritten to the index, and under MPI its local rank with it (an MPI launcher
    sets no ``LOCAL_RANK`` before DeepSpeed's ``init_distributed``: its own is read then)."""
    names = [local for _, _, local in LAUNCHER_VARIABLES]
    local_rank = next((os.environ[name] for name in names if name in os.environ), "0")
    index = int(local_rank) % torch.cuda.device_count()
    if str(index) != local_rank:
        for name in names:
            if os.environ.get(name) == local_rank:
                os.environ[name] = str(index)
    return index


def leave_process_group() -> None:
    """Every rank, once its process has nothing left to run in the group (the training CLI
    after ``train``): wait for the others (under NCCL this also finishes the collectives still
    queued on the device), then destroy the group, whose NCCL communicators torch would
    otherwise warn about and leak at exit. Not for a process that trains again: DeepSpeed
    keeps the groups it derived and cannot start over in the same process. No-op without a
    group.

    The group's C++ object, and with it gloo's threads, is freed here while the interpreter
    still runs: DeepSpeed's module-level references to the group are dropped with it
    (``deepspeed.comm.destroy_process_group``), the trained engine's reference cycles
    (which hold the backend) are collected after, and ``torch.distributed.nn.functional``,
    whose functions take ``group=group.WORLD`` as a default argument, was imported by
    ``init_process_group`` before the group existed (imported later, through torch._dynamo
    when the optimizer is made, its defaults kept the group alive). Left to the
    interpreter's finalization, that teardown now and then aborted a rank after a finished
    run (exit -6, "terminate called without an active exception"). DeepSpeed releases its
    references from 0.19.8 on (the floor in pyproject.toml)."""
    if initialized():
        barrier()
        deepspeed_comm = sys.modules.get("deepspeed.comm.comm")  # holds the live ``cdb``
        if _dist is _torch_dist and getattr(deepspeed_comm, "cdb", None) is not None:
            deepspeed_comm.destroy_process_group()  # torch's, and DeepSpeed's references
        else:
            _dist.destroy_process_group()
        gc.collect()


def shared_memory_buffer(rank: int) -> Path:
    """The /dev/shm file of DeepSpeed's CPU all-reduce buffer of ``rank`` (66 MB; made when
    every rank is on this node), named after the user, ``MASTER_ADDR`` and ``MASTER_PORT``."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def release_shared_memory_name() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer once every rank has mapped it.

    DeepSpeed never removes these files, so every CPU run left one 66 MB file per rank in
    RAM-backed /dev/shm (19 GB on this machine before stop 29, when CI's workers were then
    killed for memory). ``init_distributed`` returns on a rank after it mapped every rank's
    buffer, so after a barrier no rank opens one by name again; the mappings stay until the
    ranks exit, killed or not. Every rank reaches the barrier (CPU runs, world > 1). A single
    rank started by the ``deepspeed`` launcher gets a buffer too (``bench/gpu_check.sh`` stage
    c left one in every CI run) and unlinks it at once."""
    rank, world = rank_and_world()
    if world > 1:
        barrier()
    shared_memory_buffer(rank).unlink(missing_ok=True)


def _op(op: ReduceOp) -> Any:
    return {"sum": _dist.ReduceOp.SUM, "min": _dist.ReduceOp.MIN, "max": _dist.ReduceOp.MAX}[op]


def all_reduce(tensor: Tensor, op: ReduceOp = "sum") -> Tensor:
    """``tensor`` reduced over all ranks (a new tensor on ``tensor``'s device; the input is
    left as it is). Asynchronous on a GPU: nothing here waits for the host."""
    if not initialized():
        return tensor
    work = tensor.detach().to(group_device(), copy=True)
    _dist.all_reduce(work, op=_op(op))
    # a copy into host memory must be complete before the caller reads it
    return work.to(tensor.device, non_blocking=tensor.device.type != "cpu")


def all_gather_objects(value: object) -> list[object]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` alone. Synchronises."""
    if not initialized():
        return [value]
    gathered: list[object] = [None] * rank_and_world()[1]
    _dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait for every rank (no-op alone); under NCCL on the rank's own device."""
    if not initialized():
        return
    device = group_device()
    if device.type == "cuda":
        _dist.barrier(device_ids=[device.index])
    else:
        _dist.barrier()


# ---------------------------------------------------------------- rank liveness


def register_rank(out_dir: Path, rank: int) -> None:
    """Record this rank's pid and host under ``out_dir/ranks/`` (read by ``peer_report``)."""
    folder = Path(out_dir) / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}
    (folder / f"rank-{rank:05d}.json").write_text(json.dumps(record) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child stays a zombie until its parent (the launcher) reaps it
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_for_file(
    path: Path, out_dir: Path, rank: int, stall_s: float, poll_s: float = 1.0
) -> None:
    """Wait (without a collective: a conversion may outlast any timeout) until rank 0 has
    written ``path``, e.g. the manifest of the cache it converts. Stop with ``peer_report``
    if rank 0's process is gone (checked on this host only), and with a one-line error if
    nothing under ``path``'s folder or ``out_dir`` changed for ``stall_s`` seconds: a
    conversion appends to its shard files as structures finish, and rank 0 touches
    ``ranks/converting`` while it converts (``heartbeat``), so a silent stall means rank 0
    died on another host or the folder is not shared between the nodes."""
    watched = {Path(out_dir)}
    if not Path(path).parent.is_relative_to(out_dir):  # a cache under out_dir: walked once
        watched.add(Path(path).parent)
    newest, since = latest_change(watched), time.monotonic()
    while not Path(path).is_file():
        report = peer_report(out_dir, rank, grace_s=0.0)
        if "rank 0 (pid" in report:
            raise RuntimeError(f"{report} while waiting for {path}")
        now = latest_change(watched)
        if now != newest:
            newest, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise RuntimeError(
                f"rank {rank} stops: waiting for {path}, nothing under "
                f"{', '.join(sorted(map(str, watched)))} changed for {stall_s:.0f} s (rank 0 "
                "converting the cache is gone, or that folder is not shared with this node)"
            )
        time.sleep(poll_s)


def settle(out_dir: Path, rank: int, stall_s: float, token: str, problem: str | None) -> None:
    """End a step rank 0 does alone while the others wait (the cache conversion, which may
    outlast any collective's timeout, or fail): rank 0 writes its outcome (``problem``: None
    when it succeeded, else its one-line error) to ``ranks/<token>.json``; every other rank
    waits for that file (``wait_for_file``) and, if rank 0 failed, raises its error as a
    ValueError, so every rank stops together instead of waiting in the next collective.
    ``token`` names this launch's step (agreed by a collective before it, so a file left by
    an earlier launch is never read)."""
    path = Path(out_dir) / "ranks" / f"{token}.json"
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"problem": problem})
        return
    wait_for_file(path, out_dir, rank, stall_s, poll_s=0.2)  # read before a launcher stops it
    failed = json.loads(path.read_text())["problem"]
    if failed is not None and problem is None:
        raise PeerStopped(f"rank 0 stopped: {failed}")


class PeerStopped(ValueError):
    """This rank stops because rank 0 did (``settle``): rank 0 prints the reason, this rank
    need not (``train.failures``)."""


@contextlib.contextmanager
def heartbeat(out_dir: Path, period_s: float = 10.0) -> Iterator[None]:
    """Touch ``<out_dir>/ranks/converting`` every ``period_s`` seconds for the block (rank 0
    converting the cache; a phase that writes nothing, such as checking the shards a rerun
    keeps, still shows ``wait_for_file`` it is alive); the file is removed after."""
    path = Path(out_dir) / "ranks" / "converting"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()

    def beat() -> None:
        while True:
            path.touch()
            if done.wait(period_s):
                return

    beating = threading.Thread(target=beat, name="conversion-heartbeat", daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join()
        path.unlink(missing_ok=True)


def latest_change(folders: set[Path]) -> tuple[int, int]:
    """(newest modification time in ns, files) under ``folders`` (missing ones count as
    empty): a folder whose files are written, added or removed changes this."""
    newest, files = 0, 0
    for folder in folders:
        for entry in Path(folder).rglob("*") if Path(folder).is_dir() else ():
            try:
                newest = max(newest, entry.stat().st_mtime_ns)
            except OSError:  # removed while listed (a shard's temp folder renamed)
                continue
            files += 1
    return newest, files


def peer_report(out_dir: Path, rank: int, grace_s: float = 5.0) -> str:
    """One line naming the ranks whose processes are gone (those on this host are checked;
    others are named as unknown), for the error a surviving rank ends with.

    A killed peer closes its sockets while it exits, so the collective fails a moment before
    the process is gone (a zombie): with no peer gone yet, this looks again every 0.1 s for up
    to ``grace_s`` seconds.
    """
    local, elsewhere = peer_records(out_dir, rank)
    deadline = time.monotonic() + grace_s
    while True:
        gone = gone_peers(out_dir, rank, local)
        if gone or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if gone:
        return f"rank {rank} stops: {', '.join(gone.values())} is gone"
    note = f"; ranks {elsewhere} on other hosts not checked" if elsewhere else ""
    return f"rank {rank} stops: its peer processes on this host are all alive{note}"


def peer_records(out_dir: Path, rank: int) -> tuple[list[tuple[int, int]], list[int]]:
    """([(rank, pid)] of the other ranks on this host, [ranks on other hosts]), from the
    records ``register_rank`` wrote."""
    host, elsewhere = socket.gethostname(), []
    local: list[tuple[int, int]] = []
    for path in sorted((Path(out_dir) / "ranks").glob("rank-*.json")):
        record = json.loads(path.read_text())
        if record["rank"] == rank:
            continue
        if record["host"] != host:
            elsewhere.append(record["rank"])
        else:
            local.append((int(record["rank"]), int(record["pid"])))
    return local, elsewhere


def gone_peers(
    out_dir: Path, rank: int, local: list[tuple[int, int]] | None = None
) -> dict[int, str]:
    """{rank: "rank R (pid P on HOST)"} of the other ranks on this host whose processes are
    gone (now, no grace; ``local``: ``peer_records``' list, read again when None)."""
    host = socket.gethostname()
    local = peer_records(out_dir, rank)[0] if local is None else local
    return {r: f"rank {r} (pid {pid} on {host})" for r, pid in local if not _alive(pid)}
