"""The stated model behind bench/bench_scaling.py: per-GPU step time, NCCL ring all-reduce,
epoch and run time on W GPUs, and the plot. Every number here that is not passed in from a
measurement is an assumption, listed in ``ASSUMPTIONS`` (printed by the benchmark)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

#: The paper's reported points (GPUs, hours for the whole MPtrj training). Drawn beside the
#: model; never used to fit it.
PAPER_POINTS = {
    "reference CHGNet, 1 A100 (8.3 days)": (1, 8.3 * 24),
    "FastCHGNet, 32 A100 (1.53 h)": (32, 1.53),
}

EPOCHS = 30
TRAIN_FRACTION = 0.9  # configs/mptrj.toml split [0.9, 0.05, 0.05]
A100_FP32_FLOPS = 19.5e12  # NVIDIA A100 datasheet, FP32 (no tensor cores)
# Achieved fraction of that peak, counted in matrix-product FLOPs (torch's FlopCounterMode counts
# only those): a GNN step is mostly gathers, scatters and pointwise kernels that add time but
# no counted FLOPs, and its GEMMs are narrow (64 wide). Central estimate and the band plotted.
ACHIEVED_FRACTION = 0.05
ACHIEVED_BAND = (0.02, 0.15)
GPU_FIXED_S = 1.5e-3  # per step: ~500 fused kernels x ~3 us minimum each (CUDA-graph replay),
# the Adam update and the batch's host-to-device copy
NVLINK = {"bandwidth": 230e9, "latency": 2e-6}  # per GPU: nccl-tests bus bw on DGX A100 (8 GPUs)
INFINIBAND = {"bandwidth": 24e9, "latency": 5e-6}  # HDR 200 Gb/s = 25 GB/s, one NIC per GPU
GPUS_PER_NODE = 8


def assumptions(fraction: float = ACHIEVED_FRACTION) -> list[str]:
    """Every modelled (not measured) input, one sentence each."""
    return [
        f"MPtrj: 1,580,395 structures (CHGNet paper), {TRAIN_FRACTION:.0%} trained on per epoch, "
        f"{EPOCHS} epochs; sizes long-tailed (lognormal atoms, median 20, 1-444; bonds and "
        "angles per atom as bench_sampler.mptrj_like_sizes), validation time not counted",
        f"per-GPU compute: the measured matrix-product FLOPs of our training step per unit of "
        f"cost, at {fraction:.0%} of the A100's {A100_FP32_FLOPS / 1e12:.1f} TFLOP/s FP32 peak "
        f"(band {ACHIEVED_BAND[0]:.0%}-{ACHIEVED_BAND[1]:.0%}; an estimate: no GPU was "
        "available; CPU seconds are not carried over)",
        f"per-step fixed GPU overhead {1e3 * GPU_FIXED_S:.1f} ms (captured step replayed as one "
        "CUDA graph: ~500 kernels at >= 3 us each, Adam, host-to-device copy)",
        "a synchronous step lasts as long as its slowest rank: compute x (max / mean per-rank "
        "cost), the ratio measured on the real sampler's plan",
        f"NCCL ring all-reduce t = 2(p-1) a + 2(p-1)/p S / B: within a node of "
        f"{GPUS_PER_NODE} (NVLink 3), B = {NVLINK['bandwidth'] / 1e9:.0f} GB/s, "
        f"a = {1e6 * NVLINK['latency']:.0f} us; across nodes the InfiniBand HDR link bounds "
        f"every ring step, B = {INFINIBAND['bandwidth'] / 1e9:.0f} GB/s per GPU, "
        f"a = {1e6 * INFINIBAND['latency']:.0f} us (public figures, not measured)",
        "all-reduce not overlapped with the backward pass (DeepSpeed's overlap_comm would hide "
        "part of it), fp32 gradients, one all-reduce per step",
    ]


def ring_allreduce_seconds(message_bytes: float, gpus: int) -> float:
    """Modelled NCCL ring all-reduce time of ``message_bytes`` over ``gpus`` GPUs."""
    if gpus <= 1:
        return 0.0
    link = NVLINK if gpus <= GPUS_PER_NODE else INFINIBAND
    steps = 2 * (gpus - 1)
    return steps * link["latency"] + steps / gpus * message_bytes / link["bandwidth"]


@dataclass(frozen=True)
class GpuModel:
    """Per-GPU step time t = fixed_s + seconds_per_cost * cost (cost = atoms + bonds +
    angles of the rank's batch)."""

    mode: str
    fixed_s: float
    seconds_per_cost: float

    @classmethod
    def from_measurements(cls, step: dict, fraction: float = ACHIEVED_FRACTION) -> GpuModel:
        """From ``measure_step_cost``'s FLOPs per unit of cost (its CPU seconds unused), at
        ``fraction`` of the A100's FP32 peak."""
        achieved = fraction * A100_FP32_FLOPS
        return cls(step["mode"], GPU_FIXED_S, step["flops_per_cost"] / achieved)


def predict(
    regime: str, sampler: dict[int, dict], gpu: GpuModel, message_bytes: float, n: int
) -> list[dict]:
    """Rows of the scaling table for one regime ("strong": fixed global batch, "weak": fixed
    per-rank batch) from the sampler measurements per world size."""
    rows = []
    n_train = TRAIN_FRACTION * n
    for gpus, s in sorted(sampler.items()):
        ideal = gpu.seconds_per_cost * s["mean_cost"]
        compute = gpu.fixed_s + ideal * s["imbalance"]
        allreduce = ring_allreduce_seconds(message_bytes, gpus)
        step = compute + allreduce
        steps = math.ceil(n_train / (gpus * s["batch"]))
        epoch = steps * step
        rows.append(
            {
                "mode": gpu.mode,
                "regime": regime,
                "gpus": gpus,
                "batch": s["batch"],
                "step_ms": 1e3 * step,
                "compute_ms": 1e3 * compute,
                "fixed_ms": 1e3 * gpu.fixed_s,
                "imbalance_ms": 1e3 * ideal * (s["imbalance"] - 1.0),
                "allreduce_ms": 1e3 * allreduce,
                "imbalance": s["imbalance"],
                "epoch_min": epoch / 60,
                "run_h": EPOCHS * epoch / 3600,
            }
        )
    base = rows[0]["run_h"]
    for row in rows:
        row["speedup"] = base / row["run_h"]
        row["efficiency"] = row["speedup"] / row["gpus"]
    return rows


def bottleneck(row: dict) -> str:
    """The largest of the step's parts that do not shrink with more GPUs, or "compute" when
    together they are under a tenth of the step."""
    parts = {
        "fixed per-step overhead": row["fixed_ms"],
        "all-reduce": row["allreduce_ms"],
        "load imbalance": row["imbalance_ms"],
    }
    if sum(parts.values()) < 0.1 * row["step_ms"]:
        return "compute"
    return max(parts, key=parts.get)


def report(table: list[dict]) -> str:
    """The table (markdown) and, per mode and regime, where efficiency drops below 50 %
    and which part of the step is to blame there."""
    lines: list[str] = []
    lines.append(
        "\n| mode | regime | GPUs | b/rank | step ms | compute / all-reduce ms | max/mean "
        "| epoch min | 30 epochs h | speed-up | efficiency | bottleneck |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        lines.append(
            f"| {row['mode']} | {row['regime']} | {row['gpus']} | {row['batch']} | "
            f"{row['step_ms']:.2f} | {row['compute_ms']:.2f} / {row['allreduce_ms']:.2f} | "
            f"{row['imbalance']:.3f} | {row['epoch_min']:.2f} | {row['run_h']:.2f} | "
            f"{row['speedup']:.1f} | {row['efficiency']:.2f} | {bottleneck(row)} |"
        )
    for (mode, regime), rows in groups(table).items():
        stop = next((r for r in rows if r["efficiency"] < 0.5), None)
        where = (
            f"efficiency falls below 50 % at {stop['gpus']} GPUs; there the largest part "
            f"that does not shrink is the {bottleneck(stop)}"
            if stop
            else "efficiency stays above 50 % up to 1024 GPUs"
        )
        lines.append(f"  {mode}, {regime}: {where}")
    return "\n".join(lines)


def plot(table: list[dict], path: Path, bands: dict[str, tuple[list, list]]) -> Path | None:
    """Two panels: 30-epoch hours against GPUs (model curves, ideal lines, the band of the
    achieved-throughput estimate per mode from ``bands``: mode -> (rows at the low fraction,
    rows at the high one), strong scaling; the paper's points) and the weak-scaling step time
    split into its parts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"strong": "-", "weak": "--"}
    colours = {"direct": "tab:blue", "conservative": "tab:orange"}
    for (mode, regime), rows in groups(table).items():
        gpus = [r["gpus"] for r in rows]
        hours = [r["run_h"] for r in rows]
        left.plot(
            gpus,
            hours,
            styles[regime],
            marker="o",
            ms=3,
            color=colours.get(mode, "k"),
            label=f"model: {mode}, {regime} (b/rank {rows[0]['batch']}"
            + (f" -> {rows[-1]['batch']})" if regime == "strong" else ")"),
        )
        if regime == "strong":
            left.plot(gpus, [hours[0] / g for g in gpus], ":", color="0.6", linewidth=0.8)
            if mode in bands:
                low, high = ([r["run_h"] for r in rows] for rows in bands[mode])
                left.fill_between(gpus, low, high, color=colours.get(mode, "k"), alpha=0.12)
    for label, (gpus, hours) in PAPER_POINTS.items():
        marker = "s" if "reference" in label else "*"
        left.plot([gpus], [hours], marker, ms=11, color="crimson", label=f"paper: {label}")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="GPUs (A100, modelled)",
        ylabel=f"{EPOCHS}-epoch MPtrj run, hours",
    )
    left.set_title(
        f"predicted run time (shaded: {ACHIEVED_BAND[0]:.0%}-{ACHIEVED_BAND[1]:.0%} of peak; "
        "dotted: ideal)",
        fontsize=10,
    )
    left.legend(fontsize=7)
    strong = [r for r in table if r["regime"] == "strong" and r["mode"] == "direct"]
    bottom = [0.0] * len(strong)
    parts = (
        ("useful", "useful compute (shrinks with more GPUs)"),
        ("fixed_ms", "fixed per-step overhead"),
        ("imbalance_ms", "load imbalance (slowest rank)"),
        ("allreduce_ms", "ring all-reduce"),
    )
    for key, label in parts:
        if key == "useful":
            values = [r["compute_ms"] - r["fixed_ms"] - r["imbalance_ms"] for r in strong]
        else:
            values = [r[key] for r in strong]
        share = [100 * v / r["step_ms"] for v, r in zip(values, strong, strict=True)]
        right.bar(range(len(strong)), share, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, share, strict=True)]
    labels = [f"{r['gpus']}\n{r['step_ms']:.0f} ms" for r in strong]
    right.set_xticks(range(len(strong)), labels, fontsize=7)
    right.set(xlabel="GPUs (and modelled step time)", ylabel="% of the step")
    right.set_title("direct mode, strong scaling (global batch 1024): where a step goes")
    right.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def groups(table: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in table:
        groups.setdefault((row["mode"], row["regime"]), []).append(row)
    return groups
