"""The ``fastchgnet`` command.

    fastchgnet predict STRUCTURE... [--model 0.3.0|PATH] [-o OUT.json] [--batch-size 16]
    fastchgnet relax STRUCTURE... [-o relaxed.extxyz] [--fmax 0.1] [--fixed-cell] [...]
    fastchgnet md STRUCTURE [-o md.extxyz] [--ensemble nvt] [--thermostat nose-hoover] [...]
    fastchgnet data convert SRC -o CACHE [...]
    fastchgnet data synth -n N -o OUT.extxyz.gz [--seed S]
    fastchgnet data stats SRC [--energy-key KEY]
    fastchgnet train [--config CONFIG] [--set key=value ...] [--resume]

Exit codes: 0 success, 1 bad input (the message names the file or structure and the problem),
2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from fastchgnet.errors import StructureError
from fastchgnet.model.reference import CHECKPOINTS


def read_structures(paths: list[str]) -> list[Any]:
    """Read every structure in CIF/POSCAR (pymatgen) or extxyz/other ASE files."""
    from pymatgen.core import Structure

    structures = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            with warnings.catch_warnings():  # pymatgen warns before failing; ASE is tried next
                warnings.simplefilter("ignore")
                structure = Structure.from_file(path)
            structure.properties["label"] = path.name
            structures.append(structure)
            continue
        except Exception:
            pass
        try:
            from ase.io import read

            frames = read(path, index=":")
        except Exception as exc:
            raise ValueError(f"{path}: cannot read a structure ({exc})") from exc
        if len(frames) == 0:
            raise ValueError(f"{path}: cannot read a structure (the file holds none)")
        for index, atoms in enumerate(frames):
            atoms.info.setdefault("name", f"{path.name}[{index}]")
            structures.append(atoms)
    return structures


def load_model(spec: str) -> Any:
    """A reference version ("0.3.0", "0.2.0", "r2scan") or a path to our model file."""
    from fastchgnet import FastCHGNet

    if spec in CHECKPOINTS:
        return FastCHGNet.from_reference(spec)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"{spec}: no such model file (or one of {sorted(CHECKPOINTS)})")
    return FastCHGNet.load(spec)


def cmd_predict(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    structures = read_structures(args.structures)
    compiled = True if args.compile else None  # None: compiled on a GPU, eager on a CPU
    predictions = model.predict_structure(structures, batch_size=args.batch_size, compiled=compiled)
    names = [
        getattr(s, "properties", {}).get("label") or getattr(s, "info", {}).get("name")
        for s in structures
    ]
    records = [
        {
            "name": name,
            "energy_per_atom_eV": float(p["e"]),
            "forces_eV_per_A": p["f"].tolist(),
            "stress_GPa": p["s"].tolist(),
            "magmoms_muB": p["m"].tolist(),
        }
        for name, p in zip(names, predictions, strict=True)
    ]
    text = json.dumps(records, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)


def cmd_data_convert(args: argparse.Namespace) -> None:
    from fastchgnet.data.convert import main as convert_main

    convert_main(args.rest)


def cmd_data_stats(args: argparse.Namespace) -> None:
    from fastchgnet.data.stats import main as stats_main

    stats_main(args.rest)


def cmd_data_synth(args: argparse.Namespace) -> None:
    from fastchgnet.data.synth import run

    run(args)


def cmd_train(args: argparse.Namespace) -> int:
    from fastchgnet.train.launch import run

    return run(args)


def cmd_profile(args: argparse.Namespace) -> None:
    from fastchgnet.profiling.report import run

    run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastchgnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser("predict", help="energy, forces, stress and magmoms of structures")
    predict.add_argument("structures", nargs="+", help="CIF, POSCAR, extxyz or other ASE files")
    predict.add_argument("--model", default="0.3.0", help="reference version or model file")
    predict.add_argument("-o", "--output", help="write JSON here instead of printing it")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument(
        "--compile",
        action="store_true",
        help="run the model compiled for fixed padded shapes (default on a GPU; on a CPU the "
        "first batch compiles for tens of seconds, worth it for many structures)",
    )
    predict.set_defaults(func=cmd_predict)

    from fastchgnet.md.commands import add_commands as add_md_commands

    add_md_commands(sub)  # relax, md

    data = sub.add_parser("data", help="datasets and graph caches")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    convert = data_sub.add_parser(
        "convert", help="frames -> graph cache (see `fastchgnet data convert -h`)", add_help=False
    )
    convert.add_argument("rest", nargs=argparse.REMAINDER)
    convert.set_defaults(func=cmd_data_convert)
    stats = data_sub.add_parser(
        "stats", help="element counts, sizes, label ranges, outliers", add_help=False
    )
    stats.add_argument("rest", nargs=argparse.REMAINDER)
    stats.set_defaults(func=cmd_data_stats)
    from fastchgnet.data.synth import build_parser as synth_parser

    synth = data_sub.add_parser(
        "synth",
        help="varied crystals labelled by the reference CHGNet",
        parents=[synth_parser()],
        add_help=False,
    )
    synth.set_defaults(func=cmd_data_synth)

    from fastchgnet.train.launch import build_parser as train_parser

    train = sub.add_parser(
        "train", help="train a model (configs/*.toml)", parents=[train_parser()], add_help=False
    )
    train.set_defaults(func=cmd_train)

    from fastchgnet.profiling.report import build_parser as profile_parser

    profile = sub.add_parser(
        "profile",
        help="aten operators (CUDA kernels on GPU) per training step, ours vs the reference",
        parents=[profile_parser(argparse.ArgumentParser(add_help=False))],
    )
    profile.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (StructureError, FileNotFoundError, ValueError, ModuleNotFoundError) as exc:
        print(f"fastchgnet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
