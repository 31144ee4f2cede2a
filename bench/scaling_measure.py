"""Measurements for bench/bench_scaling.py (see its docstring): the training step's cost and
FLOPs on packed batches, the sampler's per-rank load, and a gloo all-reduce on 2 CPU ranks."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

#: Above this many structures per rank, the sampler's plan is measured on a random sample of
#: SAMPLED_STEPS global batches: its swap pass builds (steps, b, b) arrays (b = 1024 on the
#: whole set took over 19 GB), and 32 steps measure the per-step imbalance well enough.
LARGE_BATCH, SAMPLED_STEPS = 128, 32


def measure_step_cost(mode: str, batch_sizes: list[int], steps: int) -> dict[str, object]:
    """Seconds per training step (median) and FLOPs of packed batches at each batch size,
    for the reference architecture in ``mode`` ("direct" with decoupled updates, or
    "conservative")."""

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fastchgnet.data.convert import convert
    from fastchgnet.data.sources import gunzip_ase_file, read_frames
    from fastchgnet.model.chgnet import FastCHGNet
    from fastchgnet.model.config import ModelConfig
    from fastchgnet.model.loss import LossConfig
    from fastchgnet.train.checkpoint import Progress
    from fastchgnet.train.config import DataConfig, OptimConfig
    from fastchgnet.train.engine import TorchEngine
    from fastchgnet.train.loading import (
        EpochBatches,
        make_loader,
        make_sampler,
        make_splits,
        quickstart_path,
    )
    from fastchgnet.train.loop import train_epoch
    from fastchgnet.train.progress import EpochProgress
    from fastchgnet.train.step import TrainStep

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        plain = gunzip_ase_file(quickstart_path(), folder)
        frames = (f for _, f in zip(range(600), read_frames(plain), strict=False))
        convert(frames, folder / "cache", workers=1, progress=False)
        data = DataConfig(source=str(folder / "cache"), split=(1.0, 0.0, 0.0))
        splits = make_splits(folder / "cache", data)
        for batch_size in batch_sizes:
            torch.manual_seed(0)
            direct = mode == "direct"
            model = FastCHGNet(ModelConfig(forces=mode, coupled_updates=not direct))
            sampler = make_sampler(
                splits, splits.train, DataConfig(batch_size=batch_size), (0, 1), 0, packed=True
            )
            capacity = sampler.capacity
            batches = EpochBatches(sampler, splits.train, 0, ahead=False)
            loader = make_loader(splits, batches, 0, capacity)
            batches = [b for _, b in zip(range(steps), loader, strict=False)]
            engine = TorchEngine(model, OptimConfig(), steps, batch_size)
            stamps: list[float] = []
            reporter = EpochProgress(0, steps, 0, "lines", 10**9, rank=1)  # silent
            stamps.append(time.perf_counter())
            step = TrainStep(engine, LossConfig())  # what launcher/train.py runs, eager
            train_epoch(
                step,
                batches,
                Progress(),
                reporter,
                max_bad_steps=5,
                reads_at=lambda _: True,  # read the loss every step: timing includes it
                on_step=lambda *_, stamps=stamps: stamps.append(time.perf_counter()),
            )
            seconds = float(np.median(np.diff(stamps)[1:]))  # the first step warms up
            graphs, _labels = batches[0]
            with FlopCounterMode(display=False) as counter:
                train_epoch(
                    step, [batches[0]], Progress(), reporter, max_bad_steps=5, reads_at=bool
                )
            cost = capacity.atoms + capacity.bonds + capacity.angles
            rows.append(
                {
                    "batch": batch_size,
                    "cost": cost,
                    "seconds": seconds,
                    "flops": counter.get_total_flops(),
                    "structures": int(graphs.n_structures) - 1,
                }
            )
            print(
                f"  packed batch {batch_size:3d} structures (capacity {capacity.structures}, "
                f"cost {cost}): {1000 * seconds:7.1f} ms/step, "
                f"{counter.get_total_flops() / 1e9:.2f} GFLOP/step",
                flush=True,
            )
        params = sum(p.numel() for p in model.parameters())
    cost = np.array([r["cost"] for r in rows], dtype=float)
    seconds = np.array([r["seconds"] for r in rows])
    flops = np.array([r["flops"] for r in rows], dtype=float)
    slope, fixed = np.polyfit(cost, seconds, 1)
    flops_per_cost, flops_fixed = np.polyfit(cost, flops, 1)
    return {
        "mode": mode,
        "rows": rows,
        "cpu_fixed_s": float(fixed),
        "cpu_s_per_cost": float(slope),
        "flops_per_cost": float(flops_per_cost),
        "flops_fixed": float(flops_fixed),
        "params": int(params),
    }


def measure_sampler(
    n: int, world_sizes: list[int], batch_for: dict[int, int]
) -> dict[int, dict[str, float]]:
    """Per world size W: mean CV of per-rank cost and mean max/mean imbalance over the steps
    of one epoch of ``plan_batches`` with ``batch_for[W]`` structures per rank (on a sample of
    ``SAMPLED_STEPS`` global batches above ``LARGE_BATCH`` per rank)."""
    from bench_sampler import mptrj_like_sizes

    from fastchgnet.data.sampler import plan_batches, rank_loads, structure_costs

    all_costs = structure_costs(mptrj_like_sizes(n))
    rng = np.random.default_rng(0)
    out = {}
    for w in world_sizes:
        b = batch_for[w]
        costs = all_costs
        if b > LARGE_BATCH:  # the swap pass holds (steps, b, b) arrays: sample fewer steps
            costs = rng.choice(all_costs, size=min(n, SAMPLED_STEPS * w * b), replace=False)
        start = time.perf_counter()
        plan = plan_batches(costs, w, b, epoch=1)
        loads = rank_loads(plan[:-1] if len(plan) > 1 else plan, costs)  # tail step aside
        mean = loads.mean(axis=1)
        cv = float((loads.std(axis=1) / mean).mean())
        imbalance = float((loads.max(axis=1) / mean).mean())
        out[w] = {
            "batch": b,
            "cv": cv,
            "imbalance": imbalance,
            "mean_cost": float(mean.mean()),
            "steps": len(plan),
        }
        print(
            f"  W={w:5d} b={b:4d}: CV {cv:.4f}, max/mean {imbalance:.4f}, "
            f"{len(plan)} steps of {len(costs):,} structures "
            f"(plan {time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return out


def _allreduce_worker(rank: int, world: int, numel: int, repeats: int, port: int, queue) -> None:
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grad = torch.ones(numel, dtype=torch.float32)
    for _ in range(3):
        dist.all_reduce(grad)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grad)
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put(float(np.median(times)))
    dist.destroy_process_group()


def measure_allreduce(numel: int, repeats: int) -> float:
    """Median seconds of an fp32 all-reduce of ``numel`` values on 2 gloo CPU ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _allreduce_worker, args=(2, numel, repeats, port, queue), nprocs=2, start_method="spawn"
    )
    return queue.get()
