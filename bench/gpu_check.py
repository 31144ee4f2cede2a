"""Helpers of bench/gpu_check.sh: slice the quick-start frames, time the reference package's
training step, check each run's summary.json, print the closing table.

    python bench/gpu_check.py slice N OUT.extxyz
    python bench/gpu_check.py reference FRAMES.extxyz OUT.json [--device cuda] [--steps 10]
    python bench/gpu_check.py dropin FRAMES.extxyz [--device cuda] [--md-steps 50]
    python bench/gpu_check.py md FRAMES.extxyz [--device cuda] [--calls 50] [--md-steps 200]
    python bench/gpu_check.py verify RUN_DIR --stage a|b|c [--cpu] [--compiled]
    python bench/gpu_check.py report WORK_DIR [--cpu]

``verify`` reads ``<run.out_dir>/summary.json`` that ``train()`` writes (keys:
structures_per_second, graphs, recompiles, cudagraph_skips, peak_memory_bytes,
host_syncs_checked, val, test) and fails (exit 1, one line naming the key) unless a compiled
run used one graph, no recompile and no CUDA-graph skip, its steady state was checked for host
synchronisations (on a GPU), and validation metrics are finite. Without summary.json it fails
on a GPU; with ``--cpu`` it says so and checks what the run's log shows instead.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from help_text import first_sentence

SUMMARY = "summary.json"


def _wait_for(device: str) -> None:
    """Let the device finish its queued work before a clock is read (CUDA; a no-op on CPU)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def slice_frames(n: int, out: Path) -> None:
    """The first ``n`` frames of the bundled quick-start extxyz, written uncompressed."""
    from fastchgnet.train.loading import quickstart_path

    with gzip.open(quickstart_path(), "rt") as source:
        lines = source.read().splitlines(keepends=True)
    kept, start = [], 0
    while len(kept) < n and start < len(lines):
        count = int(lines[start])
        kept.append("".join(lines[start : start + count + 2]))
        start += count + 2
    out.write_text("".join(kept))
    print(f"{len(kept)} frames -> {out}")


def reference_rate(frames: Path, out: Path, device: str, batch_size: int, steps: int) -> None:
    """Structures/s of the reference chgnet 0.3.0 training step (forward e/f/s/m, its
    CombinedLoss, backward, Adam) on ``device``, batches of ``batch_size`` frames."""
    import torch

    from fastchgnet.cli.profile import reference_training_parts
    from fastchgnet.data.sources import read_frames

    model, criterion, optimizer = reference_training_parts()
    model.to(device).train()
    loaded = list(read_frames(frames))[: batch_size * 4]
    graphs = [model.graph_converter(f.structure).to(device) for f in loaded]

    def target(batch: list) -> dict:
        def tensor(x) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.float32, device=device)

        return {
            "e": tensor([f.energy_per_atom for f in batch]),
            "f": [tensor(f.forces) for f in batch],
            "s": [tensor(f.stress) for f in batch],
            "m": [
                tensor(f.magmoms if f.magmoms is not None else [0.0] * len(f.structure))
                for f in batch
            ],
        }

    batches = [
        (graphs[k : k + batch_size], target(loaded[k : k + batch_size]))
        for k in range(0, len(loaded), batch_size)
    ]

    def step(k: int) -> None:
        optimizer.zero_grad()
        prediction = model(batches[k % len(batches)][0], task="efsm")
        criterion(batches[k % len(batches)][1], prediction)["loss"].backward()
        optimizer.step()

    for k in range(2):  # warm-up
        step(k)
    _wait_for(device)
    start = time.perf_counter()
    for k in range(steps):
        step(k)
    _wait_for(device)
    seconds = time.perf_counter() - start
    rate = steps * batch_size / seconds
    out.write_text(json.dumps({"structures_per_second": rate, "batch_size": batch_size}))
    print(f"reference chgnet 0.3.0 training on {device}: {rate:.1f} structures/s")


def dropin(frames: Path, device: str, md_steps: int, count: int = 4) -> list[str]:
    """The drop-in API (``fastchgnet.compat``) against the reference package on ``device``,
    both with the pretrained 0.3.0 weights, on the first ``count`` frames: predictions agree
    (energy eV/atom, forces eV/Å, stress GPa, magmoms μB), a relaxation and an NVT run go
    through; prints seconds per MD step of both. Returns failures (empty: passed)."""
    import numpy as np
    from chgnet.model import CHGNet as ReferenceCHGNet
    from chgnet.model import MolecularDynamics as ReferenceMD
    from chgnet.model import StructOptimizer as ReferenceOptimizer

    from fastchgnet.compat import CHGNet, MolecularDynamics, StructOptimizer
    from fastchgnet.data.sources import read_frames

    structures = [f.structure for f in list(read_frames(frames))[:count]]
    ours = CHGNet.load(use_device=device, verbose=False)
    reference = ReferenceCHGNet.load(use_device=device, verbose=False)
    failures = []
    tolerance = {"e": 2e-4, "f": 2e-3, "s": 2e-2, "m": 2e-3}
    mine, theirs = ours.predict_structure(structures), reference.predict_structure(structures)
    for key, limit in tolerance.items():
        worst = max(float(np.abs(a[key] - b[key]).max()) for a, b in zip(mine, theirs, strict=True))
        print(f"dropin on {device}: predict_structure {key} max |ours - reference| {worst:.2e}")
        if not worst <= limit:
            failures.append(f"dropin: predict_structure '{key}' differs by {worst:.2e} > {limit}")

    def relaxed(optimizer: object) -> float:
        result = optimizer.relax(structures[0].copy(), steps=20, verbose=False)
        return float(result["trajectory"].energies[-1]) / len(structures[0])

    energies = [relaxed(StructOptimizer(model=ours)), relaxed(ReferenceOptimizer(model=reference))]
    print(
        f"dropin on {device}: relaxed energy (20 steps) ours {energies[0]:.5f}, reference "
        f"{energies[1]:.5f} eV/atom"
    )
    if not all(math.isfinite(e) for e in energies) or abs(energies[0] - energies[1]) > 5e-3:
        failures.append(f"dropin: relaxed energies {energies} disagree (or are not finite)")

    seconds = []
    for md_class, model in ((MolecularDynamics, ours), (ReferenceMD, reference)):
        np.random.seed(0)  # noqa: NPY002 (ASE draws from the global generator): same start for both
        md = md_class(
            atoms=structures[1].copy(),
            model=model,
            ensemble="nvt",
            temperature=300,
            starting_temperature=300,
            timestep=2,
            use_device=device,
            logfile=None,
            trajectory=None,
        )
        md.run(2)  # warm-up: first graph, first kernels
        _wait_for(device)
        start = time.perf_counter()
        md.run(md_steps)
        seconds.append((time.perf_counter() - start) / md_steps)
        if not math.isfinite(md.atoms.get_potential_energy()):
            failures.append(f"dropin: {md_class.__module__} MD energy is not finite")
    print(
        f"dropin on {device}: NVT MD on {len(structures[1])} atoms, {md_steps} steps: ours "
        f"{seconds[0] * 1e3:.1f} ms/step, reference {seconds[1] * 1e3:.1f} ms/step "
        f"({seconds[1] / seconds[0]:.2f}x)"
    )
    return failures


def md_on_device(
    frames: Path, device: str, calls: int, md_steps: int, backend: str = "inductor"
) -> list[str]:
    """Force calls of the MD calculator on ``device``, eager and compiled (one padded shape;
    CUDA graphs on a GPU), on a 12-atom frame and its 2x2x2 supercell: the compiled results
    equal eager's, ms per call of both; then ``run_md`` with its defaults (compile decided by
    cost) over ``md_steps``. ``backend``: the compiled side's (aot_eager: a quick CPU check of
    the path). Returns failures (empty: passed)."""
    import numpy as np

    from fastchgnet import FastCHGNet
    from fastchgnet.data.sources import read_frames
    from fastchgnet.md.calculator import Calculator, as_atoms, compiled_potential
    from fastchgnet.md.dynamics import run_md

    model = FastCHGNet.from_reference("0.3.0").to(device)
    small = next(f.structure for f in read_frames(frames) if len(f.structure) >= 8)
    failures = []
    rng = np.random.default_rng(0)
    for structure in (small, small * (2, 2, 2)):
        results, per_call = {}, {}
        for compiled in (False, True):
            atoms = as_atoms(structure)
            start_positions = atoms.positions.copy()
            potential = compiled_potential(model, backend=backend) if compiled else model
            atoms.calc = Calculator(potential)
            atoms.get_forces()  # compiles (compiled), first kernels (eager)
            results[compiled] = (atoms.get_potential_energy(), atoms.get_forces().copy())
            _wait_for(device)
            start = time.perf_counter()
            for _ in range(calls):  # MD-like: every call sees moved atoms
                atoms.positions = start_positions + rng.normal(0, 0.01, start_positions.shape)
                atoms.get_forces()
            _wait_for(device)
            per_call[compiled] = (time.perf_counter() - start) / calls
        de = abs(results[True][0] - results[False][0]) / len(structure)
        df = float(np.abs(results[True][1] - results[False][1]).max())
        print(
            f"md on {device}, {len(structure)} atoms: compiled vs eager |dE| {de:.1e} eV/atom, "
            f"|dF| {df:.1e} eV/Å; force call eager {per_call[False] * 1e3:.2f} ms, compiled "
            f"{per_call[True] * 1e3:.2f} ms ({per_call[False] / per_call[True]:.2f}x)"
        )
        if not (de < 1e-4 and df < 1e-3):
            failures.append(f"md: compiled differs from eager on {len(structure)} atoms")
    start = time.perf_counter()
    atoms = run_md(small, model, steps=md_steps, loginterval=md_steps, progress=False, seed=0)
    seconds = time.perf_counter() - start
    energy = atoms.get_potential_energy()
    print(
        f"md on {device}: run_md defaults, {len(small)} atoms, {md_steps} NVT steps in "
        f"{seconds:.1f} s ({seconds / md_steps * 1e3:.2f} ms/step, compile included)"
    )
    if not math.isfinite(energy):
        failures.append("md: run_md's final energy is not finite")
    return failures


def _from_log(run: Path) -> dict:
    """What the run's log (run.log beside its outputs) says: graphs and recompiles."""
    log = (run / "run.log").read_text() if (run / "run.log").is_file() else ""
    found = re.findall(r"compile: (\d+) graph\(s\), (\d+) recompile\(s\)", log)
    if not found:
        return {}
    graphs, recompiles = found[-1]
    return {"graphs": int(graphs), "recompiles": int(recompiles)}


def verify(run: Path, stage: str, cpu: bool, compiled: bool) -> list[str]:
    """Failures (empty: passed) of one stage's run."""
    path = run / SUMMARY
    if not path.is_file():
        if not cpu:
            return [f"{path}: missing (train() writes it at the end of a run)"]
        print(
            f"stage {stage}: {path} not written yet (train() does not write it in this "
            "version): checking the log instead"
        )
        seen = _from_log(run)
        if compiled and not seen:
            return [f"stage {stage}: the log reports no compile statistics"]
        summary = {**seen, "val": {}}
    else:
        summary = json.loads(path.read_text())
    failures = []
    if compiled:
        for key, expected in (("graphs", 1), ("recompiles", 0), ("cudagraph_skips", 0)):
            if key in summary and summary[key] != expected:
                failures.append(f"stage {stage}: {key} = {summary[key]}, expected {expected}")
            elif key not in summary and path.is_file():
                failures.append(f"stage {stage}: {SUMMARY} has no '{key}'")
        if not cpu and summary.get("host_syncs_checked") is not True:
            failures.append(f"stage {stage}: steady state not checked for host synchronisations")
    for name, value in summary.get("val", {}).items():
        if isinstance(value, float) and not math.isfinite(value) and name.endswith("_mae"):
            failures.append(f"stage {stage}: validation {name} is {value}")
    return failures


def report(work: Path, cpu: bool) -> None:
    """The closing table: structures/s, peak memory and checks of every stage."""
    rows = {
        "a": "captured + CUDA graphs, torch engine",
        "b": "eager, torch engine",
        "c": "DeepSpeed, 1 rank",
        "e": "eager bf16 (autocast), torch engine",
    }
    if cpu:
        rows["a"] = "captured (aot_eager), torch engine"
    heads = f"{'structures/s':>13s} {'after compile':>13s} {'peak memory':>12s}"
    print(f"\n{'stage':44s} {heads}  checks")
    for stage, name in rows.items():
        path = work / stage / SUMMARY
        if path.is_file():
            summary = json.loads(path.read_text())
            rate = f"{summary.get('structures_per_second', float('nan')):.1f}"
            steady = f"{summary.get('structures_per_second_after_compile', float('nan')):.1f}"
            peak = summary.get("peak_memory_bytes")
            memory = f"{peak / 2**20:.0f} MiB" if peak else "n/a"
            checks = (
                f"graphs {summary.get('graphs')}, recompiles {summary.get('recompiles')}, "
                f"cudagraph skips {summary.get('cudagraph_skips')}, host syncs checked "
                f"{summary.get('host_syncs_checked')}"
            )
        else:
            rate = steady = memory = "n/a"
            checks = f"no {SUMMARY}; " + str(_from_log(work / stage))
        print(f"({stage}) {name:40s} {rate:>13s} {steady:>13s} {memory:>12s}  {checks}")
    reference = work / "reference.json"
    if reference.is_file():
        rate = json.loads(reference.read_text())["structures_per_second"]
        print(f"{'reference chgnet 0.3.0 (same device)':44s} {rate:13.1f}")
    profile = work / "profile.log"
    if profile.is_file():  # the table, without the reference package's warnings
        noise = ("Warning", "USDT:", "Consider using", "volumes = ", "initialized with")
        lines = [x for x in profile.read_text().splitlines() if not any(n in x for n in noise)]
        print("\n(d) fastchgnet profile:\n" + "\n".join(lines).strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("slice")
    p.add_argument("n", type=int)
    p.add_argument("out", type=Path)
    p = sub.add_parser("reference")
    p.add_argument("frames", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p = sub.add_parser("dropin")
    p.add_argument("frames", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--md-steps", type=int, default=50)
    p = sub.add_parser("md")
    p.add_argument("frames", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--md-steps", type=int, default=200)
    p.add_argument("--backend", default="inductor")
    p = sub.add_parser("verify")
    p.add_argument("run", type=Path)
    p.add_argument("--stage", required=True)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--compiled", action="store_true")
    p = sub.add_parser("report")
    p.add_argument("work", type=Path)
    p.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "slice":
        slice_frames(args.n, args.out)
    elif args.command == "reference":
        reference_rate(args.frames, args.out, args.device, args.batch_size, args.steps)
    elif args.command in ("verify", "dropin", "md"):
        stage = args.stage if args.command == "verify" else args.command
        if args.command == "dropin":
            failures = dropin(args.frames, args.device, args.md_steps)
        elif args.command == "md":
            failures = md_on_device(
                args.frames, args.device, args.calls, args.md_steps, args.backend
            )
        else:
            failures = verify(args.run, args.stage, args.cpu, args.compiled)
        for line in failures:
            print(f"FAIL {line}")
        if failures:
            return 1
        print(f"stage {stage}: checks passed")
    else:
        report(args.work, args.cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
