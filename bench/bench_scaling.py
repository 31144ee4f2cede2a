"""The scaling curve: predicted MPtrj epoch time and 30-epoch run time on 1 to 1024 GPUs, from
three measurements on this machine and a stated model, beside the paper's reported points.

    python bench/bench_scaling.py [--out scaling_run.png] [--quick] [--replot scaling.json]

Writes the plot and, beside it, the table and measurements as JSON (``--replot`` redraws), by
default to scaling_run.png and scaling_run.json in the current directory; the committed results
bench/scaling.png and bench/scaling.json are replaced only when ``--out bench/scaling.png`` is
given.

Measured here (CPU):
  1. step cost of our packed batches against batch size: the training step launcher/train.py
     runs (``fastchgnet.train.loop.train_epoch`` over ``train.step.TrainStep`` with a
     ``TorchEngine``, eager, direct heads,
     the reference architecture), on packed, padded batches of the bundled crystals; fitted as
     t = t_fixed + k * cost, cost = atoms + bonds + angles of the padded batch. Only the
     per-cost FLOPs (torch's FlopCounterMode on the same step) and the ratio t_fixed / t are
     carried to the GPU model; CPU seconds are not;
  2. the sampler's per-rank load on an MPtrj-like long-tailed size distribution of 1.58M
     structures (``bench_sampler.mptrj_like_sizes``) for 1 to 1024 ranks, with the real
     ``plan_batches`` (size pools, LPT, swaps): per step, CV of per-rank cost and the
     imbalance max / mean (a synchronous step waits for its slowest rank);
  3. the gradient all-reduce of the model's parameters (fp32) on 2 gloo CPU ranks.

Modelled (stated, not measured; see ASSUMPTIONS): per-GPU compute time from the measured FLOPs
and an assumed achieved A100 throughput plus a per-step fixed overhead; the NCCL ring
all-reduce time from public NVLink and InfiniBand figures; no overlap of all-reduce and
backward. The model is not fitted to the paper's points; they are drawn beside it afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from help_text import first_sentence
from scaling_measure import measure_allreduce, measure_sampler, measure_step_cost
from scaling_model import (
    ACHIEVED_BAND,
    PAPER_POINTS,
    GpuModel,
    assumptions,
    plot,
    predict,
    report,
    ring_allreduce_seconds,
)

WORLD_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, ``--quick``'s sizes filled in where ``--structures`` or ``--steps``
    is not given."""
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument(
        "--out",
        default="scaling_run.png",
        help="plot path, the JSON goes beside it (default: scaling_run.png in the current "
        "directory; --out bench/scaling.png replaces the committed results)",
    )
    parser.add_argument(
        "--structures", type=int, help="MPtrj-like structures (default 1,580,395; --quick 200k)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--steps", type=int, help="timed steps per size (default 5; --quick 3)")
    parser.add_argument("--per-rank-batch", type=int, default=32, help="weak scaling")
    parser.add_argument("--global-batch", type=int, default=1024, help="strong scaling")
    parser.add_argument("--modes", nargs="+", default=["direct", "conservative"])
    parser.add_argument(
        "--achieved-fraction", type=float, default=0.05, help="of the A100 FP32 peak (estimate)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="200k structures, 3 steps (where not given)"
    )
    parser.add_argument("--replot", metavar="JSON", help="redraw from a saved scaling.json")
    args = parser.parse_args(argv)
    if args.structures is None:
        args.structures = 200_000 if args.quick else 1_580_395
    if args.steps is None:
        args.steps = 3 if args.quick else 5
    return args


def main() -> None:
    args = parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        print(report(saved["table"]))
        print(f"plot: {plot(saved['table'], Path(args.out), saved['bands'])}")
        return
    print("1. step cost of packed batches (CPU, 1 thread, eager, reference architecture)")
    steps = {}
    for mode in args.modes:
        print(f" {mode}")
        step = steps[mode] = measure_step_cost(mode, args.batch_sizes, args.steps)
        print(
            f"  fit: t = {1000 * step['cpu_fixed_s']:.1f} ms + "
            f"{1e6 * step['cpu_s_per_cost']:.2f} us x cost; FLOPs = "
            f"{step['flops_per_cost'] / 1e3:.1f} kFLOP x cost + "
            f"{step['flops_fixed'] / 1e6:.1f} MFLOP; {step['params']:,} parameters"
        )
    params = max(step["params"] for step in steps.values())
    print(f"2. sampler load on {args.structures:,} MPtrj-like structures")
    weak = {w: args.per_rank_batch for w in WORLD_SIZES}
    strong = {w: max(1, args.global_batch // w) for w in WORLD_SIZES}
    print(f"  weak scaling, {args.per_rank_batch} structures per rank")
    sampler_weak = measure_sampler(args.structures, WORLD_SIZES, weak)
    print(f"  strong scaling, global batch {args.global_batch}")
    sampler_strong = measure_sampler(args.structures, WORLD_SIZES, strong)
    print(f"3. all-reduce of {params:,} fp32 gradients, 2 gloo CPU ranks")
    gloo = measure_allreduce(params, 20)
    print(f"  {1000 * gloo:.2f} ms median ({4 * params / gloo / 1e9:.2f} GB/s algbw)")
    print("\nassumptions (modelled, not measured):")
    for line in assumptions(args.achieved_fraction):
        print(f"  - {line}")
    gpus = {
        mode: GpuModel.from_measurements(step, args.achieved_fraction)
        for mode, step in steps.items()
    }
    for mode, gpu in gpus.items():
        print(
            f"  -> per-GPU step, {mode}: {1000 * gpu.fixed_s:.2f} ms fixed + "
            f"{1e9 * gpu.seconds_per_cost:.2f} ns x cost"
        )
    message_bytes = 4 * params
    for w in (8, 64, 1024):
        print(
            f"  ring all-reduce of {message_bytes / 1e6:.2f} MB on {w} GPUs: "
            f"{1000 * ring_allreduce_seconds(message_bytes, w):.2f} ms"
        )
    table = []
    for gpu in gpus.values():
        for name, sampler in (("strong", sampler_strong), ("weak", sampler_weak)):
            table += predict(name, sampler, gpu, message_bytes, args.structures)
    print(report(table))
    print("\npaper (not used by the model):")
    for label, (n_gpus, hours) in PAPER_POINTS.items():
        mode = "conservative" if "reference" in label else "direct"
        for r in table:
            if r["gpus"] == n_gpus and r["mode"] == mode:
                print(
                    f"  {label}: {hours:.2f} h; model, {mode}, {r['regime']} "
                    f"(b/rank {r['batch']}): {r['run_h']:.2f} h"
                )
    bands = {
        mode: tuple(
            predict(
                "strong",
                sampler_strong,
                GpuModel.from_measurements(step, f),
                message_bytes,
                args.structures,
            )
            for f in ACHIEVED_BAND
        )
        for mode, step in steps.items()
    }
    path = plot(table, Path(args.out), bands)
    print(f"plot: {path}")
    saved = {"table": table, "bands": bands, "steps": steps, "gloo_allreduce_s": gloo}
    Path(args.out).with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
    if not math.isfinite(gloo):
        raise SystemExit("all-reduce measurement failed")


if __name__ == "__main__":
    main()
