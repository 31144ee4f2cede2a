"""Collectives: only fastchgnet/train/collectives.py touches torch.distributed, and every tensor
it hands to a collective lives on the device the process group was created for (a CPU tensor
has no NCCL backend, which gloo on CPU would hide)."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastchgnet.model.loss import LossConfig
from fastchgnet.train import collectives
from tests.train.helpers import run_one_rank

PACKAGE = Path(__file__).resolve().parents[2] / "fastchgnet"
ALLOWED = PACKAGE / "train" / "collectives.py"
#: modules through which a collective can be reached
DISTRIBUTED = ("torch.distributed", "deepspeed.comm")


def distributed_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) of every way ``source`` reaches torch.distributed or deepspeed.comm:
    imports (aliases included), attribute access, ``getattr`` and ``importlib`` by name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Attribute):
            names = [ast.unparse(node)]
        elif isinstance(node, ast.Call) and node.args:
            first = node.args[0] if len(node.args) == 1 else node.args[1]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                callee = ast.unparse(node.func)
                if callee in ("getattr", "importlib.import_module", "import_module", "__import__"):
                    text = first.value
                    names = [text, f"torch.{text}", f"deepspeed.{text}"]
        for name in names:
            if any(name == d or name.startswith(d + ".") for d in DISTRIBUTED):
                found.append((node.lineno, name))
                break
    return found


def test_only_the_collectives_module_touches_torch_distributed() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ALLOWED:
            continue
        for line, what in distributed_uses(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not offenders, "collectives outside train/collectives.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        "import torch.distributed as d\nd.all_reduce(x)",
        "from torch import distributed\ndistributed.barrier()",
        "from torch.distributed import all_reduce as ar\nar(x)",
        "import torch\ntorch.distributed.all_reduce(x)",
        "import torch\ngetattr(torch, 'distributed').all_reduce(x)",
        "import importlib\nimportlib.import_module('torch.distributed').barrier()",
        "import deepspeed.comm as dc\ndc.all_reduce(x)",
    ],
)
def test_the_source_check_finds_every_form_of_direct_use(source: str) -> None:
    assert distributed_uses(source)


class Handed(Exception):
    """Raised by the stand-in once it has recorded what it was handed."""


class RecordingDistributed:
    """A stand-in for torch.distributed: a group of 2 ranks whose collectives record the device
    of every tensor (and the types of every object) handed to them, then stop the caller."""

    ReduceOp = SimpleNamespace(SUM="sum", MIN="min", MAX="max")

    def __init__(self) -> None:
        self.handed: list[tuple[str, object]] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 2

    def get_backend(self) -> str:
        return "nccl"

    def all_reduce(self, tensor: torch.Tensor, op: object = None) -> None:
        self.handed.append(("all_reduce", tensor.device))
        raise Handed

    def all_gather_object(self, out: list, value: object) -> None:
        leaves = json.dumps(value, default=lambda x: f"<{type(x).__name__}>")
        self.handed.append(("all_gather_object", leaves))
        raise Handed

    def barrier(self, device_ids: list[int] | None = None) -> None:
        self.handed.append(("barrier", device_ids))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> RecordingDistributed:
    """The stand-in installed with its group on the "meta" device (a device none of the
    test's tensors start on, as a rank's CUDA device differs from the host)."""
    fake = RecordingDistributed()
    monkeypatch.setattr(collectives, "_dist", fake)
    monkeypatch.setattr(collectives, "_device", torch.device("meta"))
    return fake


def test_the_stand_in_records_a_tensor_on_the_wrong_device() -> None:
    fake = RecordingDistributed()
    with pytest.raises(Handed):
        fake.all_reduce(torch.zeros(1))  # what `dist.all_reduce(x.cpu())` under NCCL did
    assert fake.handed == [("all_reduce", torch.device("cpu"))]


def test_metric_sums_hand_the_collective_tensors_on_the_group_device(recorder) -> None:
    from fastchgnet.train.metrics import MetricSums
    from tests.model.test_loss import _batch

    metrics = MetricSums()
    metrics.add(*_batch())
    with pytest.raises(Handed):
        metrics.all_reduce()
    assert recorder.handed == [("all_reduce", torch.device("meta"))]


def test_the_finite_check_hands_the_collective_a_flag_on_the_group_device(recorder) -> None:
    from fastchgnet.train.config import OptimConfig
    from fastchgnet.train.engine import TorchEngine
    from fastchgnet.train.step import TrainStep
    from tests.compile.conftest import padded_batch, small_model

    model = small_model("direct")
    engine = TorchEngine(model, OptimConfig(), total_steps=1, global_batch=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Handed):
        TrainStep(engine, LossConfig())(*padded_batch())
    assert recorder.handed == [("all_reduce", torch.device("meta"))]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_parameter_sync_check_gathers_host_digests_only(recorder) -> None:
    from fastchgnet.train.engine import DeepSpeedEngine

    model = torch.nn.Linear(3, 2)
    with pytest.raises(Handed):
        DeepSpeedEngine.replicas_in_sync(SimpleNamespace(module=model))
    ((name, payload),) = recorder.handed
    assert name == "all_gather_object"
    assert "<Tensor>" not in payload  # a sha256 string: pickled through the group as bytes


def test_the_epoch_loss_is_the_mean_over_every_ranks_steps(monkeypatch, recorder) -> None:
    from fastchgnet.train.checkpoint import Progress
    from fastchgnet.train.epoch import ranks_mean_loss

    # this rank: 3 finite steps, loss 0.5 each; the other rank: 1 finite step, loss 2.5
    monkeypatch.setattr(collectives, "_device", torch.device("cpu"))

    def other_rank_too(tensor: torch.Tensor, op: object = None) -> None:
        recorder.handed.append(("all_reduce", tensor.device))
        tensor += torch.tensor([2.5, 1.0], dtype=tensor.dtype)

    monkeypatch.setattr(recorder, "all_reduce", other_rank_too)
    progress = Progress(epoch_loss=1.5, epoch_finite=3)
    assert ranks_mean_loss(progress, torch.device("cpu")) == pytest.approx(4.0 / 4)
    assert recorder.handed == [("all_reduce", torch.device("cpu"))]
    assert ranks_mean_loss(Progress(), torch.device("cpu")) == pytest.approx(2.5)


def test_barrier_names_the_ranks_cuda_device_under_nccl(monkeypatch, recorder) -> None:
    monkeypatch.setattr(collectives, "_device", torch.device("cuda", 3))
    collectives.barrier()
    assert recorder.handed == [("barrier", [3])]


def test_the_peer_report_names_a_rank_whose_process_exits_within_the_grace(tmp_path) -> None:
    # a SIGKILLed rank closes its sockets while it exits: the survivor's collective fails a
    # moment before the process is gone (stop 28's CI: "no local peer process is gone")
    collectives.register_rank(tmp_path, 0)
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        record = {"rank": 1, "pid": peer.pid, "host": socket.gethostname()}
        (tmp_path / "ranks" / "rank-00001.json").write_text(json.dumps(record))
        report = collectives.peer_report(tmp_path, 0, grace_s=0.0)
        assert "its peer processes on this host are all alive" in report
        report = collectives.peer_report(tmp_path, 0, grace_s=10.0)
        assert f"rank 1 (pid {peer.pid}" in report
    finally:
        peer.wait()


@pytest.mark.parametrize(("local_rank", "visible", "device"), [(3, 8, 3), (3, 1, 0), (5, 2, 1)])
def test_each_rank_selects_its_gpu_among_those_it_sees(
    monkeypatch, local_rank: int, visible: int, device: int
) -> None:
    """LOCAL_RANK modulo the visible devices: a scheduler that shows each rank only its own
    GPU (one visible device) makes that device 0, where LOCAL_RANK itself would not exist;
    DeepSpeed, which reads LOCAL_RANK again, sees the same index."""
    chosen: list[int] = []
    seen: list[str] = []  # LOCAL_RANK as DeepSpeed reads it (its device_id, its engine)
    stub = SimpleNamespace(init_distributed=lambda **kwargs: seen.append(os.environ["LOCAL_RANK"]))
    monkeypatch.setitem(sys.modules, "deepspeed", stub)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1])
    monkeypatch.setattr(collectives, "install", lambda *args: None)
    collectives.init_process_group(60)
    assert chosen == [device]
    assert seen == [str(device)]


def test_waiting_for_rank_0s_cache_stops_when_nothing_changes(tmp_path) -> None:
    """Rank 0 gone on another node (its pid cannot be checked here), or an output folder the
    nodes do not share: nothing changes, and the wait ends with one line naming the file."""
    manifest = tmp_path / "cache" / "manifest.json"
    with pytest.raises(RuntimeError, match=r"rank 1 stops: waiting for .*manifest.json"):
        collectives.wait_for_file(manifest, tmp_path, 1, stall_s=0.3, poll_s=0.05)


def test_waiting_for_rank_0s_cache_lasts_while_the_conversion_writes(tmp_path) -> None:
    """A conversion that keeps writing (longer in all than ``stall_s``) is waited for."""
    import threading

    manifest = tmp_path / "cache" / "manifest.json"

    def convert() -> None:
        (tmp_path / "cache").mkdir()
        for k in range(8):
            (tmp_path / "cache" / f"part-{k}").write_bytes(b"x" * k)
            time.sleep(0.1)
        manifest.write_text("{}")

    writer = threading.Thread(target=convert)
    writer.start()
    collectives.wait_for_file(manifest, tmp_path, 1, stall_s=0.35, poll_s=0.05)
    writer.join()
    assert manifest.is_file()


def test_rank_0s_heartbeat_keeps_the_others_waiting_through_a_silent_phase(tmp_path) -> None:
    """Checking the shards a rerun keeps writes nothing for a while: rank 0's heartbeat shows
    it is alive, and its file is gone once the conversion is done."""
    import threading

    manifest = tmp_path / "cache" / "manifest.json"

    def convert() -> None:
        with collectives.heartbeat(tmp_path, period_s=0.05):
            time.sleep(0.8)  # longer than the waiting rank's stall_s, with no writes
            manifest.parent.mkdir()
            manifest.write_text("{}")

    writer = threading.Thread(target=convert)
    writer.start()
    collectives.wait_for_file(manifest, tmp_path, 1, stall_s=0.3, poll_s=0.05)
    writer.join()
    assert not (tmp_path / "ranks" / "converting").exists()


LEAVE_GROUP = """
import weakref
from pathlib import Path
import torch, torch.distributed as td
from fastchgnet.model.loss import LossConfig
from fastchgnet.train import collectives
from tests.train.helpers import run_one_rank
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.engine import DEFAULT_DEEPSPEED_JSON, DeepSpeedEngine
from fastchgnet.train.step import TrainStep
from tests.compile.conftest import padded_batch, small_model

def train() -> None:  # as ``train`` returns to the CLI: the engine is garbage, in cycles
    model, optim = small_model("direct"), OptimConfig(lr=1e-2)
    engine = DeepSpeedEngine(model, optim, 1, 4, DEFAULT_DEEPSPEED_JSON)
    TrainStep(engine, LossConfig())(*padded_batch())

def gloo_threads() -> int:  # native threads of gloo's process group (names on Linux)
    names = [p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")]
    return sum(name.startswith(("gloo", "pt_gloo")) for name in names)

import sys
assert "torch.distributed.nn" not in sys.modules  # else the early import proves nothing
collectives.init_process_group(60)
world = weakref.ref(td.group.WORLD)
train()
print("TRAINED", gloo_threads() > 0)
collectives.leave_process_group()
print("LEFT", td.is_initialized(), world() is None, gloo_threads())
"""


@pytest.mark.slow
def test_leaving_the_group_frees_it_before_the_interpreter_ends() -> None:
    """After a DeepSpeed engine trained, ``leave_process_group`` leaves no reference to the
    group (DeepSpeed's module-level ones, the dead engine's cycles, the default arguments of
    ``torch.distributed.nn.functional``): its C++ object and gloo's threads end while the
    interpreter runs, not in its finalization, where they now and then aborted a finished
    rank (exit -6, "terminate called without an active exception")."""
    pytest.importorskip("deepspeed")
    lines = run_one_rank(LEAVE_GROUP).splitlines()
    assert "LEFT False True 0" in lines
    assert "TRAINED True" in lines or not Path("/proc/self/task").is_dir()
