"""Engines: who owns the optimiser step. Plain torch (one process) or DeepSpeed (data parallel).

Both expose the same small surface to the training step: ``forward(batch)``,
``backward(loss)``, ``step(skip)``, ``lr``, ``state_dict()`` / ``load_state_dict()``. ``skip`` is
a 0-d float tensor on the device (1: the step had a non-finite loss on some rank): the fused
Adam reads it as its ``found_inf`` and leaves weights, moments and step count untouched, so
the decision never waits for the host. DeepSpeed is imported only when
used, so a single-process run needs nothing beyond torch. The DeepSpeed JSON
(launcher/deepspeed.json: ZeRO stage, overlap_comm, bucket sizes) is read as is; the batch
size, gradient clipping and the optimiser come from the TrainConfig.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastchgnet.errors import json_object
from fastchgnet.profiling.nvtx import ALLREDUCE, ranged
from fastchgnet.train.collectives import all_gather_objects, rank_and_world
from fastchgnet.train.config import OptimConfig
from fastchgnet.train.launchers import launched_distributed

#: The DeepSpeed config used when ``run.deepspeed_config`` is empty.
DEFAULT_DEEPSPEED_JSON = Path(__file__).resolve().parents[2] / "launcher" / "deepspeed.json"


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
    """Adam or AdamW over the trainable parameters: the fused implementation (one kernel over
    all parameters, CPU and CUDA), which also skips a step on the device (``skip_if``)."""
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, weight_decay=config.weight_decay, fused=True)


def skip_if(optimizer: torch.optim.Optimizer, skip: Tensor) -> None:
    """Make ``optimizer``'s next ``step()`` a no-op where ``skip`` (0-d, 1.0 = skip) is set,
    without reading it on the host: the fused Adam's ``found_inf`` input, which leaves the
    weights, both moments and the step count as they were."""
    optimizer.found_inf = skip.to(torch.float32)  # read by torch.optim.Adam(fused=True).step


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


def apply_optim_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    base_lr: float,
    weight_decay: float,
) -> None:
    """Give a restored ``optimizer`` and ``scheduler`` this run's base learning rate and
    weight decay (a checkpoint's state carries the old ones): every group's ``initial_lr``,
    ``weight_decay`` and the schedule's ``base_lrs`` become the new values, and ``lr`` is the
    new base times the schedule's factor at the restored step, as a run started with them
    would have it there. With unchanged values this recomputes what the checkpoint held."""
    scheduler.base_lrs = [base_lr] * len(optimizer.param_groups)
    step = scheduler.last_epoch
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["weight_decay"] = base_lr, weight_decay
        group["lr"] = base_lr * factor(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # get_last_lr()


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
        self.base_lr, self.weight_decay = scaled_lr(config, global_batch), config.weight_decay
        self.optimizer = make_optimizer(self.params, config, self.base_lr)
        self.scheduler = make_scheduler(self.optimizer, config, total_steps)
        self.grad_clip = config.grad_clip
        self.device = next(model.parameters()).device
        self.step_lr = self.lr  # the last update's rate (``step``)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def forward(self, batch: Any) -> Any:
        """The model's Prediction for a GraphBatch already on ``device``."""
        return self.module(batch)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def gradients(self) -> list[Tensor]:
        """The gradients ``backward`` left (those of parameters that have one)."""
        return [p.grad for p in self.params if p.grad is not None]

    def replicas_in_sync(self) -> bool:
        """One process: trivially true."""
        return True

    def step(self, skip: Tensor) -> None:
        """Clip (when set), update unless ``skip`` (see ``skip_if``), advance the schedule;
        ``step_lr`` is the rate this update used (``lr`` is then the next one's)."""
        self.step_lr = self.lr
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        skip_if(self.optimizer, skip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and scheduler state (the model's weights are saved separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def needs_every_shard(self, payload: dict[str, Any]) -> bool:
        """One process: a resume reads its own file only."""
        return False

    def load_state_dict(
        self, state: dict[str, Any], all_ranks: list[dict | None] | None = None
    ) -> None:
        """Restore; the learning rate and weight decay are this run's config's (a resume's
        ``--set optim.lr=...`` takes effect at the checkpoint's step: ``apply_optim_settings``)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_optim_settings(self.optimizer, self.scheduler, self.base_lr, self.weight_decay)


def deepspeed_settings(path: str | Path, batch_per_rank: int, world: int, clip: float) -> dict:
    """The DeepSpeed JSON with batch sizes and clipping filled in from the TrainConfig.

    Two of DeepSpeed's defaults stall a GPU's host every step, so they are changed here:
    - its throughput timer (on unless the JSON's ``timers`` says otherwise) calls
      ``torch.cuda.synchronize()`` as an eager step starts and ends: turned off;
    - its gradient clipping under ZeRO 0 copies two host scalars to the device (blocking) and
      all-reduces a norm the already-reduced gradients make redundant: DeepSpeed is told not
      to clip (``gradient_clipping`` 0) and ``DeepSpeedEngine.step`` clips on the device as
      ``TorchEngine`` does. ZeRO 1 clips its own partitions, and fp16 / bf16 its unscaled
      float32 copies, so those keep DeepSpeed's (``deepspeed_clips``).
    """
    settings = read_deepspeed_config(path)
    settings.pop("comment", None)
    settings["train_micro_batch_size_per_gpu"] = batch_per_rank
    settings["train_batch_size"] = batch_per_rank * world
    settings["gradient_accumulation_steps"] = 1
    settings["gradient_clipping"] = clip if deepspeed_clips(settings) else 0.0
    settings.setdefault("timers", {"throughput": {"enabled": False}})
    return settings


def uses_deepspeed(kind: str) -> bool:
    """Whether ``run.engine`` = ``kind`` trains through DeepSpeed: asked for, or "auto"
    under a launcher of several ranks."""
    return kind == "deepspeed" or (kind == "auto" and launched_distributed())


def deepspeed_config_path(setting: str | Path) -> Path:
    """The DeepSpeed config file ``run.deepspeed_config`` = ``setting`` names (empty:
    ``DEFAULT_DEEPSPEED_JSON``)."""
    return Path(setting) if setting != "" else DEFAULT_DEEPSPEED_JSON


def read_deepspeed_config(path: str | Path) -> dict:
    """The DeepSpeed config file at ``path`` as a dict.

    Raises:
        FileNotFoundError, ValueError: in one line naming the file (missing, unreadable, not
            JSON, not a JSON object).
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"run.deepspeed_config: no such file {str(path)!r}") from None
    except OSError as error:
        raise ValueError(f"run.deepspeed_config: cannot read {str(path)!r}: {error}") from None
    return json_object(text, f"run.deepspeed_config {str(path)!r}")


def check_deepspeed_config(setting: str | Path, sync_debug: bool) -> None:
    """Before anything runs: the DeepSpeed config ``run.deepspeed_config`` = ``setting``
    names (``deepspeed_config_path``) can be read (``read_deepspeed_config``), and
    ``run.sync_debug`` is not asked of a config whose optimiser waits for the host by
    design. Under ZeRO >= 1 or DeepSpeed's fp16 / bf16, DeepSpeed's own step reads its
    overflow flag and gradient norm on the host (``.item()``), and with ``overlap_comm``
    calls ``synchronize()`` after every backward: the check would stop the first
    steady-state step on DeepSpeed's waits, not ours. ValueError in one line."""
    path = deepspeed_config_path(setting)
    settings = read_deepspeed_config(path)
    if sync_debug and deepspeed_clips(settings):
        halves = half_precisions(settings)
        what = f"ZeRO stage {zero_stage(settings)}" + "".join(f" with {k}" for k in halves)
        raise ValueError(
            f"run.sync_debug: {str(path)!r} asks for {what}, whose DeepSpeed optimiser reads "
            "its overflow flag and gradient norm on the host every step by design; check "
            f"the step under ZeRO 0 in float32 ({DEFAULT_DEEPSPEED_JSON.name}) or leave "
            "run.sync_debug off"
        )


def zero_stage(settings: dict) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it names none)."""
    return int(settings.get("zero_optimization", {}).get("stage", 0))


def deepspeed_clips(settings: dict) -> bool:
    """Whether DeepSpeed clips the gradients itself under ``settings``: with ZeRO >= 1 (the
    partitions are its own) or its fp16 / bf16 (it clips the unscaled float32 copies); else
    ``DeepSpeedEngine.step`` does, on the device."""
    return zero_stage(settings) >= 1 or bool(half_precisions(settings))


def half_precisions(settings: dict) -> list[str]:
    """The half-precision modes a DeepSpeed config turns on: "fp16", "bf16" or none."""
    return [kind for kind in ("fp16", "bf16") if settings.get(kind, {}).get("enabled", False)]


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

        self.rank, self.world_size = rank_and_world()
        params = [p for p in model.parameters() if p.requires_grad]
        self.base_lr = scaled_lr(config, batch_per_rank * self.world_size)
        self.weight_decay = config.weight_decay
        optimizer = make_optimizer(params, config, self.base_lr)
        scheduler = make_scheduler(optimizer, config, total_steps)
        settings = deepspeed_settings(
            settings_path, batch_per_rank, self.world_size, config.grad_clip
        )
        self.optimizer_inner = optimizer
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            model_parameters=params,
            config=settings,
            dist_init_required=False,
        )
        self.module = self.engine.module
        # the gradient all-reduce, which DeepSpeed runs at the end of backward, as its own
        # NVTX range (an instance attribute shadows the method that backward calls)
        self.engine.allreduce_gradients = ranged(ALLREDUCE)(self.engine.allreduce_gradients)
        self.zero_stage = zero_stage(settings)
        # clipped here, on the device, unless DeepSpeed clips (see ``deepspeed_settings``)
        self.grad_clip = 0.0 if deepspeed_clips(settings) else config.grad_clip
        self.params = params
        self.device = self.engine.device
        self.step_lr = self.lr  # the last update's rate (``step``)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def forward(self, batch: Any) -> Any:
        """The model's Prediction through DeepSpeed's engine (its forward hooks run)."""
        return self.engine(batch)

    def backward(self, loss: Tensor) -> None:
        """Backward, then DeepSpeed's gradient all-reduce (buckets; ZeRO 1: its reduction)."""
        self.engine.backward(loss)

    def gradients(self) -> list[Tensor]:
        """The gradients ``backward`` left on this rank: the parameters' (ZeRO 0, all-reduced),
        or under ZeRO >= 1 this rank's reduced partition of them (DeepSpeed's optimiser holds
        it, and its backward has set every parameter's ``grad`` to None). Where DeepSpeed
        keeps none there (optimiser offload to the CPU), what the parameters hold: DeepSpeed's
        own overflow check then skips a non-finite step, which ``TrainStep`` counts as finite."""
        own = [p.grad for p in self.params if p.grad is not None]
        partitions = getattr(self.optimizer, "averaged_gradients", None)
        if self.zero_stage == 0 or not isinstance(partitions, dict):
            return own  # (a DeepSpeed optimiser without partitions, e.g. its BF16_Optimizer)
        reduced = [g for group in partitions.values() for g in group or () if g is not None]
        return reduced or own  # none with optimiser offload: DeepSpeed's own check remains

    def replicas_in_sync(self) -> bool:
        """Whether every rank holds bit-identical parameters (sha256 of their bytes; a
        debugging check that synchronises, run every ``run.check_sync_every`` steps)."""
        return len(set(all_gather_objects(parameter_digest(self.module)))) == 1

    def step(self, skip: Tensor) -> None:
        """Clip (ZeRO 0, when set: the all-reduced gradients are the same on every rank), then
        DeepSpeed's step (ZeRO 1's clipping, optimiser, schedule); the fused Adam inside skips
        the update where ``skip`` is set (every rank holds the same flag: ``TrainStep``);
        ``step_lr`` is the rate this update used (``lr`` is then the next one's)."""
        self.step_lr = self.lr
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        skip_if(self.optimizer_inner, skip)
        self.engine.step()

    def state_dict(self) -> dict[str, Any]:
        """This rank's optimiser state (a shard under ZeRO 1) and the scheduler."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def needs_every_shard(self, payload: dict[str, Any]) -> bool:
        """Whether resuming from this rank's checkpoint ``payload`` needs every rank's: a ZeRO
        shard saved elastic (its optimizer state a list, not a dict) is rebuilt from all."""
        state = payload["engine"]["optimizer"]
        return self.zero_stage >= 1 and not isinstance(state.get("base_optimizer_state"), dict)

    def load_state_dict(
        self, state: dict[str, Any], all_ranks: list[dict | None] | None = None
    ) -> None:
        """Restore; under ZeRO >= 1 DeepSpeed takes the shards by rank (``all_ranks``: this
        rank's at its index, every rank's where ``needs_every_shard``; the others None). The
        learning rate and weight decay are this run's config's, set on the torch optimiser
        inside DeepSpeed's (``apply_optim_settings``)."""
        if self.zero_stage >= 1:
            shards = [s["optimizer"] if s is not None else None for s in (all_ranks or [state])]
            self.optimizer.load_state_dict(shards, load_optimizer_states=True)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_optim_settings(self.optimizer_inner, self.scheduler, self.base_lr, self.weight_decay)


def make_engine(
    model: nn.Module,
    config: OptimConfig,
    kind: str,
    total_steps: int,
    batch_per_rank: int,
    deepspeed_config: str = "",
) -> TorchEngine | DeepSpeedEngine:
    """The engine ``kind`` asks for ("auto": DeepSpeed when launched distributed)."""
    if not uses_deepspeed(kind):
        if torch.cuda.is_available():
            model = model.to("cuda")
        return TorchEngine(model, config, total_steps, batch_per_rank)
    return DeepSpeedEngine(
        model, config, total_steps, batch_per_rank, deepspeed_config_path(deepspeed_config)
    )
