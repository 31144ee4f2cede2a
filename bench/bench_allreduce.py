"""The per-step gradient all-reduce: measured with gloo on 2 CPU ranks, modelled for NCCL.

FastCHGNet (conservative, the reference architecture) has 412,431 trainable fp32 parameters
(of 412,525 in all; the printed count is the trainable one): 1.65 MB of gradients per step.
This benchmark

1. times ``all_reduce`` of that many floats on 2 gloo ranks over loopback (one flat bucket, as
   DeepSpeed's one 2M-element bucket does; DeepSpeed-style buckets of 50k and 500k elements;
   and one call per parameter tensor, as an unbucketed reduction would);
2. times DeepSpeed's ``backward`` + ``step`` on the real parameter list for ZeRO 0 and ZeRO 1
   settings (the loss is a trivial function of the parameters, so the time is DeepSpeed's
   reduction, bookkeeping and Adam, not the model);
3. models NCCL all-reduce on NVLink and InfiniBand (alpha-beta: ring 2(p-1) latencies and
   2(p-1)/p of the bytes at the link bandwidth; tree 2 log2(p) latencies and 2x the bytes),
   and prints each as a share of a training step that waits for it: all-reduce / (compute +
   all-reduce), compute being the measured CPU step (``--cpu-step-ms``) or the stated GPU step
   estimates.

    python bench/bench_allreduce.py [--repeats 50] [--cpu-step-ms 112.9] [--no-deepspeed]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from help_text import first_sentence

ROOT = Path(__file__).resolve().parents[1]

#: Link models (bandwidth per GPU per direction in GB/s, latency per message hop in µs).
#: Public figures; the achievable fraction and the latencies are assumptions, stated here.
LINKS = {
    # A100 NVLink3: 12 links x 50 GB/s = 600 GB/s bidirectional per GPU, 300 GB/s per
    # direction (NVIDIA A100 datasheet). NCCL's nccl-tests on DGX A100 report about 230 GB/s
    # all-reduce bus bandwidth for large messages; latency per ring step assumed 5 µs.
    "NVLink3 (A100, one node)": (230.0, 5.0),
    # H100/H200 NVLink4: 900 GB/s bidirectional (NVIDIA H100 datasheet); 360 GB/s assumed
    # achievable per direction, 5 µs per step.
    "NVLink4 (H100/H200, one node)": (360.0, 5.0),
    # HDR InfiniBand: 200 Gb/s = 25 GB/s per NIC (one NIC per GPU, as DGX A100); 22 GB/s
    # achievable and 10 µs per inter-node step (NCCL over IB verbs) assumed.
    "HDR InfiniBand 200 Gb/s (across nodes)": (22.0, 10.0),
}

#: GPU compute per training step (no communication), ms. The paper's single-A100 run (35.4 h
#: for 30 MPtrj epochs) is 2.7 ms per structure: 86 ms for 32 structures per GPU. A captured
#: CUDA-graph step is assumed up to 8x faster than that: about 10 ms.
GPU_STEPS_MS = {"paper's A100, 32 structures/GPU": 86.0, "captured step, assumed 8x faster": 10.0}


def parameter_shapes() -> list[torch.Size]:
    """Shapes of FastCHGNet's trainable parameters (the reference architecture)."""
    from fastchgnet import FastCHGNet

    return [p.shape for p in FastCHGNet().parameters() if p.requires_grad]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` after 5 warm-up calls, ranks in step."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    shapes = parameter_shapes()
    numel = sum(math.prod(s) for s in shapes)
    results: dict[str, float] = {"parameters": float(numel), "tensors": float(len(shapes))}
    flat = torch.randn(numel)
    for bucket in (numel, 500_000, 50_000):
        buckets = list(flat.split(bucket))
        name = f"gloo all_reduce, buckets of {min(bucket, numel)} ({len(buckets)} calls)"
        results[name] = _timed(lambda b=buckets: [dist.all_reduce(x) for x in b], args.repeats)
    grads = [torch.randn(s) for s in shapes]
    name = f"gloo all_reduce, one call per parameter tensor ({len(grads)} calls)"
    results[name] = _timed(lambda: [dist.all_reduce(g) for g in grads], args.repeats)
    if not args.no_deepspeed:
        results.update(_deepspeed_steps(shapes, args.repeats))
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


#: DeepSpeed settings compared (the rest as launcher/deepspeed.json).
DEEPSPEED_VARIANTS = {
    "ZeRO 0": {"stage": 0},
    "ZeRO 1, overlap_comm, one 2M bucket": {
        "stage": 1,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 2_000_000,
        "allgather_bucket_size": 2_000_000,
    },
    "ZeRO 1, no overlap, one 2M bucket": {
        "stage": 1,
        "overlap_comm": False,
        "reduce_bucket_size": 2_000_000,
        "allgather_bucket_size": 2_000_000,
    },
    "ZeRO 1, overlap_comm, 50k buckets": {
        "stage": 1,
        "overlap_comm": True,
        "reduce_bucket_size": 50_000,
        "allgather_bucket_size": 50_000,
    },
}


def _deepspeed_steps(shapes: list[torch.Size], repeats: int) -> dict[str, float]:
    """Seconds of DeepSpeed backward + step (trivial loss) for each of DEEPSPEED_VARIANTS."""
    import deepspeed

    out = {}
    for name, zero in DEEPSPEED_VARIANTS.items():
        model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s)) for s in shapes])
        settings = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=settings, dist_init_required=False
        )
        weights = [torch.randn(s) for s in shapes]

        def step(engine=engine, weights=weights) -> None:
            loss = sum((p * w).sum() for p, w in zip(engine.module, weights, strict=True))
            engine.backward(loss)
            engine.step()

        out[f"DeepSpeed backward + step, {name}"] = _timed(step, max(10, repeats // 2))
    return out


def ring_ms(nbytes: float, ranks: int, gbps: float, latency_us: float) -> float:
    """Ring all-reduce: 2(p-1) steps, each moving nbytes/p at the link bandwidth."""
    return 2 * (ranks - 1) * (latency_us * 1e-3 + nbytes / ranks / (gbps * 1e9) * 1e3)


def tree_ms(nbytes: float, ranks: int, gbps: float, latency_us: float) -> float:
    """Double binary tree (NCCL's choice for small messages across nodes), pipelined:
    2 log2(p) latencies and about 2x the bytes at the link bandwidth."""
    return 2 * math.log2(ranks) * latency_us * 1e-3 + 2 * nbytes / (gbps * 1e9) * 1e3


def share(allreduce_ms: float, compute_ms: float) -> str:
    """The all-reduce's share of a step that computes, then waits for it (no overlap)."""
    total = compute_ms + allreduce_ms
    return f"{allreduce_ms / total:.2%} of {compute_ms:.1f} ms compute + the all-reduce"


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--cpu-step-ms",
        type=float,
        default=112.9,
        help="the CPU training step's compute, ms (default: README's Performance headline, "
        "training step, conservative compiled, batch 16 packed, 2 threads, stop 52: 112.9 ms)",
    )
    parser.add_argument("--no-deepspeed", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = str(Path(scratch) / "results.json")
        mp.spawn(_worker, args=(2, _free_port(), args, out), nprocs=2, join=True)
        results = json.loads(Path(out).read_text())
    numel = int(results.pop("parameters"))
    results.pop("tensors")
    nbytes = 4 * numel
    print(f"{numel:,} trainable fp32 parameters: {nbytes / 1e6:.2f} MB of gradients per step")
    print("measured, 2 CPU ranks, gloo over loopback (median):")
    for name, seconds in results.items():
        print(f"  {name:62s} {seconds * 1e3:8.3f} ms  ({share(seconds * 1e3, args.cpu_step_ms)})")
    print("modelled NCCL all-reduce of the gradients (one bucket):")
    for link, (gbps, latency) in LINKS.items():
        for ranks in (8, 32):
            ring, tree = (
                ring_ms(nbytes, ranks, gbps, latency),
                tree_ms(nbytes, ranks, gbps, latency),
            )
            shares = "; ".join(share(min(ring, tree), step) for step in GPU_STEPS_MS.values())
            print(f"  {link:40s} p={ranks:2d}: ring {ring:.3f} ms, tree {tree:.3f} ms ({shares})")
    print("GPU step estimates: " + "; ".join(f"{k} {v:.0f} ms" for k, v in GPU_STEPS_MS.items()))


if __name__ == "__main__":
    main()
