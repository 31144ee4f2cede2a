"""Engines: who owns the optimiser step. Plain torch (one process) or DeepSpeed (data parallel).

Both expose the same small surface to the loop: ``backward(loss)``, ``step()``, ``lr``,
``all_finite(loss)``, ``state_dict()`` / ``load_state_dict()``. DeepSpeed is imported only when
used, so a single-process run needs nothing beyond torch. The DeepSpeed JSON
(launcher/deepspeed.json: ZeRO stage, overlap_comm, bucket sizes) is read as is; the batch
size, gradient clipping and the optimiser come from the TrainConfig.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastchgnet.train.config import OptimConfig

#: The DeepSpeed config used when ``run.deepspeed_config`` is empty.
DEFAULT_DEEPSPEED_JSON = Path(__file__).resolve().parents[2] / "launcher" / "deepspeed.json"


def launched_distributed() -> bool:
    """True when a launcher (deepspeed, torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def scaled_lr(config: OptimConfig, global_batch: int) -> float:
    """``config.lr`` scaled by the global batch size (linear, square root or none)."""
    ratio = global_batch / config.lr_reference_batch
    if config.lr_scaling == "linear":
        return config.lr * ratio
    if config.lr_scaling == "sqrt":
        return config.lr * math.sqrt(ratio)
    return config.lr


def make_optimizer(
    params: list[nn.Parameter], config: OptimConfig, lr: float
) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier: linear warm-up, then cosine to ``min_lr_ratio`` (or constant)."""
    warmup, floor = config.warmup_steps, config.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / decay_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order (equal digests: identical weights)."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TorchEngine:
    """One process: torch optimiser, scheduler and optional gradient clipping."""

    rank, world_size = 0, 1

    def __init__(
        self, model: nn.Module, config: OptimConfig, total_steps: int, global_batch: int
    ) -> None:
        self.module = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, config, scaled_lr(config, global_batch))
        self.scheduler = make_scheduler(self.optimizer, config, total_steps)
        self.grad_clip = config.grad_clip
        self.device = next(model.parameters()).device

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def forward(self, batch: Any) -> Any:
        """The model's Prediction for a GraphBatch already on ``device``."""
        return self.module(batch)

    def all_finite(self, loss: Tensor) -> bool:
        return bool(torch.isfinite(loss.detach()).item())

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def replicas_in_sync(self) -> bool:
        """One process: trivially true."""
        return True

    def step(self) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and scheduler state (the model's weights are saved separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any], all_ranks: list[dict] | None = None) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def deepspeed_settings(path: str | Path, batch_per_rank: int, world: int, clip: float) -> dict:
    """The DeepSpeed JSON with batch sizes and clipping filled in from the TrainConfig."""
    settings = json.loads(Path(path).read_text())
    settings.pop("comment", None)
    settings["train_micro_batch_size_per_gpu"] = batch_per_rank
    settings["train_batch_size"] = batch_per_rank * world
    settings["gradient_accumulation_steps"] = 1
    settings["gradient_clipping"] = clip
    return settings


def deepspeed_safe_globals() -> list[type]:
    """The DeepSpeed classes inside a ZeRO optimiser state_dict, for ``torch.load`` with
    ``weights_only=True`` (empty when DeepSpeed is not installed)."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, ZeroStageEnum, fragment_address]


def init_distributed() -> None:
    """Start the process group: NCCL when CUDA is available, gloo otherwise (CPU)."""
    import deepspeed

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)


class DeepSpeedEngine:
    """Data parallel through DeepSpeed's engine (ZeRO 0/1); gradients all-reduced in
    ``backward``, parameters identical on every rank after every ``step``."""

    def __init__(
        self,
        model: nn.Module,
        config: OptimConfig,
        total_steps: int,
        batch_per_rank: int,
        settings_path: str | Path,
    ) -> None:
        import deepspeed
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(
            params, config, scaled_lr(config, batch_per_rank * self.world_size)
        )
        scheduler = make_scheduler(optimizer, config, total_steps)
        settings = deepspeed_settings(
            settings_path, batch_per_rank, self.world_size, config.grad_clip
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            model_parameters=params,
            config=settings,
            dist_init_required=False,
        )
        self.module = self.engine.module
        self.zero_stage = int(settings.get("zero_optimization", {}).get("stage", 0))
        self.device = self.engine.device

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def forward(self, batch: Any) -> Any:
        """The model's Prediction through DeepSpeed's engine (its forward hooks run)."""
        return self.engine(batch)

    def all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks must skip a step together)."""
        import torch.distributed as dist

        flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1).cpu()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss)

    def replicas_in_sync(self) -> bool:
        """Whether every rank holds bit-identical parameters (sha256 of their bytes)."""
        import torch.distributed as dist

        digests: list[str] = [""] * self.world_size
        dist.all_gather_object(digests, parameter_digest(self.module))
        return len(set(digests)) == 1

    def step(self) -> None:
        self.engine.step()

    def state_dict(self) -> dict[str, Any]:
        """This rank's optimiser state (a shard under ZeRO 1) and the scheduler."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any], all_ranks: list[dict] | None = None) -> None:
        """Restore; under ZeRO >= 1 DeepSpeed wants every rank's shard (``all_ranks``)."""
        if self.zero_stage >= 1:
            shards = [s["optimizer"] for s in (all_ranks or [state])]
            self.optimizer.load_state_dict(shards, load_optimizer_states=True)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def make_engine(
    model: nn.Module,
    config: OptimConfig,
    kind: str,
    total_steps: int,
    batch_per_rank: int,
    deepspeed_json: str = "",
) -> TorchEngine | DeepSpeedEngine:
    """The engine ``kind`` asks for ("auto": DeepSpeed when launched distributed)."""
    use_deepspeed = kind == "deepspeed" or (kind == "auto" and launched_distributed())
    if not use_deepspeed:
        if torch.cuda.is_available():
            model = model.to("cuda")
        return TorchEngine(model, config, total_steps, batch_per_rank)
    return DeepSpeedEngine(
        model, config, total_steps, batch_per_rank, deepspeed_json or DEFAULT_DEEPSPEED_JSON
    )
