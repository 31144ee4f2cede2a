"""fastchgnet: train, run and profile the CHGNet interatomic potential (see each command's -h).

    fastchgnet predict STRUCTURE... [--model 0.3.0|PATH|RUN] [-o OUT.json|OUT.extxyz] [...]
    fastchgnet relax STRUCTURE... [-o relaxed.extxyz] [--fmax 0.1] [--fixed-cell] [...]
    fastchgnet md STRUCTURE [-o md.extxyz] [--ensemble nvt] [--thermostat nose-hoover] [...]
    fastchgnet data convert SRC -o CACHE [...]
    fastchgnet data synth -n N -o OUT.extxyz.gz [--seed S]
    fastchgnet data stats SRC [--energy-key KEY]
    fastchgnet train [--config CONFIG] [--set key=value ...] [--resume]

Exit codes: 0 success, 1 bad input (the message names the file or structure and the problem;
predict and relax run the structures they can take, write their results and name each one
skipped), 2 bad usage (argparse), 130 / 143 stopped by SIGINT / SIGTERM, 141 stdout closed by
its reader (``| head``: the rest is dropped quietly).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from fastchgnet.cli.data import add_commands as add_data_commands
from fastchgnet.cli.inputs import (
    STRUCTURES_HELP,
    DefaultsFormatter,
    add_model_arguments,
    load_model,
    read_structures_skipping,
    screen_structures,
    structure_label,
)
from fastchgnet.cli.md import add_commands as add_md_commands
from fastchgnet.cli.output_files import check_frames_file, check_output_file, refuse_existing
from fastchgnet.errors import StructureError

#: the fastchgnet package's folder: warnings raised from its files print as one line
PACKAGE = Path(__file__).resolve().parents[1]


def cmd_predict(args: argparse.Namespace) -> int:
    from fastchgnet.model.potential import predict_graph_list
    from fastchgnet.signals import stop_signal, stop_signals

    if args.output:
        refuse_existing(args.output, "-o", args.overwrite)
        check_predictions_file(args.output)
    model = load_model(args.model, args.precision, args.device)
    structures, unread = read_structures_skipping(args.structures, "predict")
    graphs = screen_structures(model.config, structures, "predict", "predicted")
    good = [index for index, graph in enumerate(graphs) if graph is not None]
    potential = model
    on_gpu = next(model.parameters()).is_cuda
    if args.compile or (args.compile is None and on_gpu):  # default: compiled on a GPU only
        from fastchgnet.compile.potential import CompiledPotential

        potential = CompiledPotential(model)  # one for the whole list: few shapes compile
    finished: dict[int, dict[str, Any]] = {}  # input index -> its prediction, as they come

    def keep(indices: list[int], results: list[dict[str, Any]]) -> None:
        finished.update((good[k], result) for k, result in zip(indices, results, strict=True))

    try:
        with stop_signals():  # SIGTERM: SystemExit(143); either keeps the finished ones
            predict_graph_list(potential, [graphs[k] for k in good], args.batch_size, done=keep)
        if potential is not model:
            print(compile_summary(potential), file=sys.stderr)
    except (KeyboardInterrupt, SystemExit) as stop:
        signum = stop_signal(stop)
        if signum is None:
            raise
        try:  # the signal's exit code either way
            write_predictions(args.output, structures, finished, new=not args.overwrite)
            where = args.output or "stdout"
        except FileExistsError as error:  # another run wrote -o meanwhile: this one's beside
            where = str(error)
        print(
            f"predict interrupted: {len(finished)} of {len(structures)} structures predicted, "
            f"written to {where}",
            file=sys.stderr,
        )
        return 128 + signum
    write_predictions(args.output, structures, finished, new=not args.overwrite)
    return 1 if len(good) < len(structures) or unread else 0


def predicted_frame(structure: Any, prediction: dict[str, Any]) -> Any:
    """``structure`` as ASE Atoms named as read, with ``prediction`` (``predict_graph_list``'s
    e, f, s, m) as its SinglePointCalculator's results (``md.calculator.ase_result``'s units)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from fastchgnet.md.calculator import as_atoms, ase_result

    atoms = as_atoms(structure)
    energy = float(prediction["e"])
    part = {"total_energy": energy * len(atoms), "forces": prediction["f"]}
    part |= {"stress": prediction["s"], "magmoms": prediction["m"]}
    atoms.info.update(name=structure_label(structure), energy_per_atom=energy)
    atoms.calc = SinglePointCalculator(atoms, **ase_result(part))
    return atoms


def compile_summary(potential: Any) -> str:
    """One line on what a ``CompiledPotential`` did for predict: graphs built (seconds) and
    loaded from the store, the shapes (capacities) made, a growth named, eager calls, and
    the padding waste (padding entries per real atom + bond + angle)."""
    shapes, loaded = len(potential.capacities), potential.graphs_loaded
    built = potential.graphs_built  # a graph loaded from the store counts in loaded only
    grown = f" ({shapes - 1} grown: a batch outgrew the first)" if shapes > 1 else ""
    eager = f", {potential.eager_calls} batch(es) eager" if potential.eager_calls else ""
    return (
        f"fastchgnet predict: compiled ({potential.backend}): {built} graph(s) built in "
        f"{potential.compile_seconds:.1f} s, {loaded} loaded from the store; {shapes} "
        f"shape(s){grown}{eager}; padding waste "
        f"{100 * potential.padding.waste:.0f} % over {potential.padding.batches} batch(es)"
    )


def is_json(output: str) -> bool:
    """Whether predict writes JSON records to ``output``: a name ending .json or no suffix."""
    return Path(output).suffix.lower() in ("", ".json")


def check_predictions_file(output: str) -> None:
    """Raise ValueError (one line, naming -o) unless predict can write ``output``: JSON
    (``is_json``) or frames of a format that keeps their results (extxyz, traj): a CIF or
    PDB holds the structures and would drop every prediction unsaid."""
    check_output_file(output, "-o", "out.json")
    if not is_json(output):
        try:
            check_frames_file(output, "-o", several=True, labelled=True)
        except ValueError as error:
            raise ValueError(f"{error}, or .json for JSON records") from None


def site_columns(structure: Any) -> dict[str, list[Any]]:
    """What each per-atom row of a JSON record belongs to: ``species`` (element symbols) and
    ``positions_A`` ((n, 3) Cartesian, Å), in the structure's site order, which is the order of
    the forces and magmoms (pymatgen's for a CIF, which may not be the file's order)."""
    if hasattr(structure, "get_chemical_symbols"):  # ASE Atoms
        species, positions = structure.get_chemical_symbols(), structure.positions
    else:  # pymatgen Structure: Element or Species (with an oxidation state)
        species, positions = [s.symbol for s in structure.species], structure.cart_coords
    return {"species": list(species), "positions_A": positions.tolist()}


def write_predictions(
    output: str | None, structures: list[Any], done: dict[int, Any], new: bool = False
) -> None:
    """The predictions ``done`` (input index -> ``predict_graph_list``'s dict) in input order,
    each named as read, written atomically to ``output`` or printed when it is None: JSON
    records (the species and Cartesian positions, Å, of the rows, as ``site_columns``; energy
    eV/atom, forces eV/Å, stress GPa, magmoms μB), or for another suffix
    (extxyz, traj, ...) ASE frames with a SinglePointCalculator in ASE's units (total energy
    eV, forces eV/Å, stress eV/Å^3 as a Voigt 6-vector, magmoms μB) and the energy per atom
    (eV) as ``energy_per_atom`` in their info. ``new``: ``output`` must still be free when
    written (``files.put_new``: another run's file there is kept, this one's goes beside)."""
    from fastchgnet.files import atomic_write_bytes, write_frames_atomic

    if output and not is_json(output):
        frames = [predicted_frame(structures[k], p) for k, p in sorted(done.items())]
        write_frames_atomic(output, frames, new=new)
        return
    records = [
        {
            "name": structure_label(structures[index]),
            **site_columns(structures[index]),
            "energy_per_atom_eV": float(p["e"]),
            "forces_eV_per_A": p["f"].tolist(),
            "stress_GPa": p["s"].tolist(),
            "magmoms_muB": p["m"].tolist(),
        }
        for index, p in sorted(done.items())
    ]
    text = json.dumps(records, indent=1)
    if output:
        atomic_write_bytes(output, (text + "\n").encode(), new=new)
    else:
        print(text)


def cmd_train(args: argparse.Namespace) -> int:
    from fastchgnet.cli.train import run

    return run(args)


def cmd_finetune(args: argparse.Namespace) -> int:
    from fastchgnet.cli.finetune import run

    return run(args)


def cmd_profile(args: argparse.Namespace) -> None:
    from fastchgnet.cli.profile import run

    run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastchgnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser(
        "predict",
        help="energy, forces, stress and magmoms of structures",
        formatter_class=DefaultsFormatter,
    )
    predict.add_argument("structures", nargs="+", help=STRUCTURES_HELP)
    add_model_arguments(predict)
    predict.add_argument(
        "-o",
        "--output",
        help="write here instead of printing JSON: .json (or no suffix) JSON records (species, "
        "positions Å, energy_per_atom eV, forces eV/Å, stress GPa, magmoms μB); .extxyz, "
        ".traj, ... frames with ASE's results (total energy eV, forces eV/Å, stress eV/Å^3, "
        "magmoms μB; energy_per_atom in each frame's info)",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an -o file that exists (without it, one is refused)",
    )
    predict.add_argument("--batch-size", type=int, default=16, help="structures per model call")
    predict.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="run the model compiled for fixed padded shapes, or not (--no-compile); default: "
        "on a GPU, not on a CPU, where the first batch compiles for tens of seconds, worth it "
        "for many structures",
    )
    predict.set_defaults(func=cmd_predict)

    add_md_commands(sub)  # relax, md
    add_data_commands(sub)  # data convert|synth|stats

    from fastchgnet.cli.train import build_parser as train_parser

    train = sub.add_parser(
        "train", help="train a model (configs/*.toml)", parents=[train_parser()], add_help=False
    )
    train.set_defaults(func=cmd_train)

    from fastchgnet.cli.finetune import build_parser as finetune_parser

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune (configs/finetune.toml) and report MAE before and after",
        parents=[finetune_parser()],
        add_help=False,
    )
    finetune.set_defaults(func=cmd_finetune)

    from fastchgnet.cli.profile import build_parser as profile_parser

    profile = sub.add_parser(
        "profile",
        help="aten operators (CUDA kernels on GPU) per training step, ours vs the reference",
        parents=[profile_parser(argparse.ArgumentParser(add_help=False))],
    )
    profile.set_defaults(func=cmd_profile)
    return parser


def quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and Python's flush of what is left in
    its buffer at exit would print a BrokenPipeError traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a file descriptor (a test's capture): nothing is flushed at exit


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = functools.partial(_one_line_warning, args.command, formatwarning)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone (``| head``) shows here, not at interpreter exit
    except BrokenPipeError:  # stdout's reader closed it: stop quietly, as Unix tools do
        quiet_stdout()
        return 128 + signal.SIGPIPE
    except (
        StructureError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
        ModuleNotFoundError,
    ) as exc:
        print(f"fastchgnet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before a command's own handling (loading the model, ...)
        print(f"fastchgnet {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
    return code or 0


def _one_line_warning(
    command: str,
    default: Any,
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A warning of ours as the command prints it: ``fastchgnet <command>: warning: message``
    on one line, without Python's file, line and source; other packages' as ``default``."""
    if Path(filename).resolve().is_relative_to(PACKAGE):
        return f"\nfastchgnet {command}: warning: {message}\n"
    return default(message, category, filename, lineno, line)


if __name__ == "__main__":
    sys.exit(main())
