"""The training step's matrix products on this CPU: torch's own (MKL, what both our model and
the reference run) against oneDNN, at the step's own shapes and layouts.

On an AMD EPYC with AVX-512 (stops 51-53) our ratios to the reference fell below the Xeon's
(direct compiled 8.0-8.2x against 10.3-10.7x). A profile of the direct compiled step at batch
16 put 53 % of its time in ``aten::mm`` and ``aten::addmm``. torch's CPU wheel runs them with
MKL, and this bench asks how much oneDNN, in the same wheel, would give there.

It records every ``aten.mm`` and ``aten.addmm`` of one training step, with shapes and strides
(``train.step.standalone_step``, conservative and direct, eager and with ``--compiled`` the
captured step; the first packed batch of bench_train_step.py ``--packed``). Then it times each
distinct product three ways, on random factors of the same shapes and strides:
- MKL, as the step ran it;
- oneDNN through ``torch.ops.mkldnn._linear_pointwise`` (torch's one float32 entry point to
  it), its primitive cached. Any copy on that route is on its clock: the op makes its left
  factor contiguous, and a weight with padded rows is copied here (oneDNN would take its
  reference kernel, about 100x slower);
- that route's first call, where this process had not made the primitive yet (a row reuses
  what an earlier row made: the later rows' "new" column is a lower bound).

Products are grouped by the left factor's layout: "NN" row-major (the forward products and
the input gradients), "TN" column-major (the weight gradients, whose sums run over all atoms,
bonds or angles), "other" neither. Per group: milliseconds per step and the ratio; then the
bound on the step with oneDNN for each product where it was faster, and the bound if the
TN products ran at the NN products' ratio (what oneDNN's own transposed GEMM might give
without the copy; not reachable from Python here).

    python bench/bench_gemm.py [--threads 2] [--batch-size 16] [--repeats 20]
        [--modes conservative direct] [--compiled]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import median_time
from help_text import first_sentence

#: the table's columns
HEADER = "{:22s} {:>5s} {:>6s} {:>8s} {:>10s} {:>7s} {:>8s} {:>7s}"


def record_gemms(step: Callable[[], object]) -> Counter[tuple]:
    """Each (op, bias dims, (shape, stride) of both factors) of the matrix products one call of
    ``step`` dispatches, counted (torch.profiler's recorded shapes and strides: it sees
    inductor's ``extern_kernels.mm(..., out=)`` calls as well as eager ones)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    seen: Counter[tuple] = Counter()
    for event in prof.events():
        if event.name not in ("aten::mm", "aten::addmm"):
            continue
        shapes, strides = event.structured_input_shapes, event.structured_input_strides
        first = 0 if event.name == "aten::mm" else 1
        bias = () if first == 0 else (len(shapes[0]),)
        factors = tuple((tuple(shapes[k]), tuple(strides[k])) for k in (first, first + 1))
        seen[(event.name[6:], bias, *factors)] += 1
    return seen


def strided(shape: tuple, stride: tuple) -> torch.Tensor:
    """A random float32 tensor of ``shape`` with ``stride`` (its storage just large enough)."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    return torch.randn(size).as_strided(shape, stride)


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it or its transpose is contiguous (layouts oneDNN runs fast), else a copy."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def factors(key: tuple) -> tuple[Tensor, Tensor, Tensor | None]:
    """(a, b, bias): random factors of a recorded product's shapes and strides; bias (n,) or
    (m, n) for addmm, None for mm."""
    _, bias_dims, (a_shape, a_stride), (b_shape, b_stride) = key
    a, b = strided(a_shape, a_stride), strided(b_shape, b_stride)
    if not bias_dims:
        return a, b, None
    return a, b, torch.randn(b_shape[1] if bias_dims == (1,) else (a_shape[0], b_shape[1]))


def products(key: tuple) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """(MKL, oneDNN): one recorded product as torch ran it and as oneDNN runs it
    (``_linear_pointwise(x, w, bias)`` = x @ w.T + bias), on the same ``factors``."""
    a, b, bias = factors(key)
    linear = torch.ops.mkldnn._linear_pointwise
    if bias is None:
        return (lambda: torch.mm(a, b)), lambda: linear(
            dense(a), dense(b.t()), None, "none", [], ""
        )
    if bias.dim() == 1:  # oneDNN adds a row bias itself
        return (lambda: torch.addmm(bias, a, b)), lambda: linear(
            dense(a), dense(b.t()), bias, "none", [], ""
        )
    return (
        lambda: torch.addmm(bias, a, b)
    ), lambda: linear(dense(a), dense(b.t()), None, "none", [], "") + bias


def layout(key: tuple) -> str:
    """The left factor's layout: "NN" row-major, "TN" column-major, "other" neither."""
    a_stride = key[2][1]
    return "NN" if a_stride[1] == 1 else "TN" if a_stride[0] == 1 else "other"


def summarise(timed: list[tuple[str, int, float, float, float]]) -> tuple[dict, float, float]:
    """Per layout group [calls, MKL s, oneDNN s, new-primitive s] per step, from ``timed``
    rows (layout, calls, MKL s, oneDNN cached s, first-call s) of one step's products; the
    seconds per step oneDNN would save, taken where it was faster; and the same with the TN
    products' saving taken as if they ran at the NN group's ratio."""
    groups: dict[str, list[float]] = {}
    best = 0.0
    for group, calls, mkl, cached, first in timed:
        best += calls * max(mkl - cached, 0.0)
        total = groups.setdefault(group, [0, 0.0, 0.0, 0.0])
        for index, value in enumerate((calls, calls * mkl, calls * cached, first)):
            total[index] += value
    if "NN" in groups and "TN" in groups:
        nn_ratio = groups["NN"][1] / groups["NN"][2]
        tn_saving = groups["TN"][1] * max(1 - 1 / nn_ratio, 0.0)
        tn_now = sum(c * max(m - o, 0.0) for g, c, m, o, _ in timed if g == "TN")
        best_tn_like_nn = best - tn_now + tn_saving
    else:
        best_tn_like_nn = best
    return groups, best, best_tn_like_nn


def time_gemm(key: tuple, repeats: int) -> tuple[float, float, float]:
    """(MKL, oneDNN cached, oneDNN first call) seconds of one recorded product."""
    mkl, onednn = products(key)
    mkl_seconds = median_time(mkl, repeats, warmup=2)
    start = time.perf_counter()
    onednn()  # creates and JIT-compiles the primitive for this shape
    first = time.perf_counter() - start
    return mkl_seconds, median_time(onednn, repeats, warmup=2), first


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["conservative", "direct"])
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="the compiled steps' products too (a padded packed batch, as CPU training "
        "captures it; each graph compiles first, about a minute)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench_train_step import padded_batches, random_labels

    from fastchgnet import FastCHGNet
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.numerics import flush_denormals
    from fastchgnet.train.loading import collate_items
    from fastchgnet.train.step import dynamic_sizes, standalone_step

    structures = varied_structures(240, seed=7, max_atoms=108)
    labels = random_labels(structures, seed=1)
    graphs = [build_graph(s) for s in structures]
    order = np.random.default_rng(0).permutation(len(structures))
    # the first of the batches bench_train_step.py --packed --batches 12 times: eager takes it
    # as it is, compiled padded as CPU training pads it
    chunks, _, padded = padded_batches(
        graphs, labels, order, args.batch_size, 12, True, dynamic_sizes("cpu")
    )
    chosen = chunks[0]
    batches = {False: collate_items([(graphs[i], labels[i]) for i in chosen])}
    if args.compiled:
        batches[True] = padded[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; the first packed batch "
        f"of bench_train_step.py --packed at batch size {args.batch_size}: {len(chosen)} "
        f"crystals, {sum(len(structures[i]) for i in chosen)} atoms; milliseconds per step"
    )
    print(HEADER.format("step", "group", "calls", "MKL ms", "oneDNN ms", "ratio", "new ms",
                        "saves"))  # fmt: skip
    for mode in args.modes:
        for compiled in sorted(batches):
            torch.manual_seed(0)
            if mode == "conservative":
                model = FastCHGNet.from_reference("0.3.0")
            else:
                model = FastCHGNet(forces="direct", coupled_updates=False)
            step = standalone_step(model.train(), compiled=compiled)
            batch = batches[compiled]
            name = f"{mode} {'compiled' if compiled else 'eager'}"
            with flush_denormals():
                step(*batch)  # a compiled step builds its graph here
                step_seconds = median_time(lambda s=step, b=batch: s(*b), 5, warmup=1)
                seen = record_gemms(lambda s=step, b=batch: s(*b))
            report(name, seen, step_seconds, args.repeats)


def report(name: str, seen: Counter[tuple], step_seconds: float, repeats: int) -> None:
    """Times every recorded product (``time_gemm``), prints the groups' rows and the bounds on
    the step (``summarise``)."""
    timed = [(layout(key), calls, *time_gemm(key, repeats)) for key, calls in seen.items()]
    groups, best, best_tn_like_nn = summarise(timed)
    for group, (calls, mkl, cached, first) in sorted(groups.items()):
        print(HEADER.format(name, group, str(calls), f"{mkl * 1e3:.1f}", f"{cached * 1e3:.1f}",
                            f"{mkl / cached:.2f}x", f"{first * 1e3:.1f}",
                            f"{(mkl - cached) / step_seconds:.1%}"))  # fmt: skip
    gemm = sum(g[1] for g in groups.values())
    print(
        f"{name}: step {step_seconds * 1e3:.1f} ms; its products timed alone (MKL) "
        f"{gemm * 1e3:.1f} ms ({gemm / step_seconds:.0%}); oneDNN for each product where "
        f"faster, primitives cached: the step {step_seconds / (step_seconds - best):.2f}x "
        f"faster at best; with the TN products at the NN ratio "
        f"{step_seconds / (step_seconds - best_tn_like_nn):.2f}x"
    )


if __name__ == "__main__":
    main()
