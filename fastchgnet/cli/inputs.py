"""What the commands read: structures from files, and a model by version or path."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastchgnet.model.device import check_device
from fastchgnet.model.reference import CHECKPOINTS

#: the structure arguments' help (``read_structures``)
STRUCTURES_HELP = (
    "CIF, POSCAR, extxyz or other ASE files; FILE@INDEX takes some of a file's structures "
    "(ASE's index: traj.extxyz@-1 the last, @0:10, @::5)"
)


def read_structures(paths: list[str], skipped: list[str] | None = None) -> list[Any]:
    """Read every structure in CIF (every data block) or POSCAR files (pymatgen), or extxyz,
    vasprun.xml, OUTCAR, XDATCAR, traj and the other files ASE reads (every frame, every ionic
    step), each named by its file (the path as given where two files share a name) and its
    index in a file of several (a frame of several carrying a ``label`` or ``name`` is named by
    it and its index: ``label[i]``). ``FILE@INDEX`` takes some of a file's structures, with
    ASE's index syntax: ``traj.extxyz@-1`` the last, ``@0:10``, ``@::5`` (names keep the index).
    With a ``skipped`` list and several paths, a file that cannot be read adds its reason
    there and the others are read (a ValueError where none can be).

    Raises:
        FileNotFoundError: a path is not a file.
        ValueError: a file holds no structure, a CIF block pymatgen refuses (its reason), a
            POSCAR without element names (pymatgen would call its atoms hydrogen) or whose lines
            do not say what they hold (``data.poscar``: named with the line), or an
            ``@INDEX`` that is not an index or selects none.
    """
    chosen = [_selection(name) for name in paths]
    names = [Path(name).name for name, _ in chosen]
    structures: list[Any] = []
    for (name, selection), given in zip(chosen, paths, strict=True):
        # runA/POSCAR and runB/POSCAR: the names as given tell the results apart
        base = name if names.count(Path(name).name) > 1 else Path(name).name
        try:
            structures.extend(_read_file(Path(name), base, selection, given))
        except (FileNotFoundError, ValueError) as error:
            if skipped is None or len(paths) == 1:
                raise
            skipped.append(str(error))
    if skipped and not structures:
        raise ValueError(f"none of the {len(paths)} files can be read (the first: {skipped[0]})")
    return structures


def read_structures_skipping(paths: list[str], command: str) -> tuple[list[Any], list[str]]:
    """``read_structures`` for a command over several files that runs the ones it can read:
    each file it cannot read is named on stderr (``fastchgnet <command>: skipped file
    reason``). Returns the structures and the reasons of the files skipped."""
    structures = read_structures(paths, skipped := [])
    for problem in skipped:
        print(f"fastchgnet {command}: skipped file {problem}", file=sys.stderr)
    return structures, skipped


def _read_file(path: Path, base: str, selection: slice | int, given: str) -> list[Any]:
    """``read_structures``' structures of one file ``given`` (``path`` and ``selection``)."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; name the structure files in it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    found = None if _several_frames(path) else _pymatgen_structures(path)
    if found is not None:
        for index, structure in enumerate(found):
            structure.properties["label"] = base if len(found) == 1 else f"{base}[{index}]"
    else:
        found = _ase_frames(path, base)
    picked = found[selection] if isinstance(selection, slice) else _one(found, selection, given)
    if not picked:
        raise ValueError(f"{given}: selects none of the {len(found)} structures in {path}")
    return picked


def _selection(name: str) -> tuple[str, slice | int]:
    """``FILE@INDEX`` as (FILE, an int or a slice); any other name as (name, all)."""
    path, at, index = name.rpartition("@")
    if not at or Path(name).exists():
        return name, slice(None)
    try:
        parts = [int(part) if part.strip() else None for part in index.split(":")]
        if len(parts) == 1 and parts[0] is not None:
            return path, parts[0]
        if 2 <= len(parts) <= 3 and (len(parts) < 3 or parts[2] != 0):  # a step of 0: none
            return path, slice(*parts)
    except ValueError:
        pass
    raise ValueError(f"{name}: @{index} is not an index (use FILE@-1, FILE@0:10, FILE@::5)")


def _one(found: list[Any], index: int, given: str) -> list[Any]:
    """``[found[index]]``, or a one-line error naming the count."""
    if not -len(found) <= index < len(found):
        raise ValueError(f"{given}: index {index} is out of range ({len(found)} structures)")
    return [found[index]]


def _ase_frames(path: Path, base: str) -> list[Any]:
    """Every frame ASE reads from ``path``, named as ``read_structures`` says."""
    if path.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz")):  # VASP runs, packed
        raise ValueError(
            f"{path}: an archive, not a structure file: name the structure files in it "
            "(vasprun.xml, OUTCAR, POSCAR, CIF), or convert its VASP runs to a dataset with "
            "`fastchgnet data convert`"
        )
    try:
        from fastchgnet.data.sources import read_atoms

        frames = read_atoms(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read a structure ({exc})") from exc
    if len(frames) == 0:
        raise ValueError(f"{path}: cannot read a structure (the file holds none)")
    for index, atoms in enumerate(frames):
        given = atoms.info.get("label") or atoms.info.get("name")
        if given and len(frames) > 1:  # frames of a trajectory often share their label
            atoms.info["label"] = f"{given}[{index}]"
        atoms.info.setdefault("name", f"{base}[{index}]")
    return list(frames)


#: formats of several frames pymatgen reads first: CIF (its refusals explained), JSON (as_dict)
PYMATGEN_FIRST = frozenset({"cif", "json"})


def _several_frames(path: Path) -> bool:
    """Whether ASE reads ``path`` as frames (vasprun.xml, OUTCAR, XDATCAR, extxyz, traj, ...):
    pymatgen's ``Structure.from_file`` reads a vasprun.xml's last step alone."""
    from ase.io.formats import filetype, ioformats

    try:
        name = filetype(str(path))
    except Exception:  # ASE raises UnknownFileTypeError, KeyError or OSError
        return False
    known = ioformats.get(name)
    return known is not None and not known.single and name not in PYMATGEN_FIRST


def _pymatgen_structures(path: Path) -> list[Any] | None:
    """The structures pymatgen reads from ``path``: every block of a CIF (a block it refuses
    is an error with its reason, never left out or handed to another reader), or one POSCAR;
    None when the file is not a CIF and pymatgen cannot read it (ASE is tried next)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    from fastchgnet.data.poscar import check_poscar

    is_cif = ".cif" in (suffix.lower() for suffix in path.suffixes)
    check_poscar(path)  # a POSCAR whose lines do not say what they hold: refused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if is_cif:
                parser = CifParser(path)
                found = parser.parse_structures(primitive=False)
                blocks = len(parser.as_dict())
            else:
                found, blocks = [Structure.from_file(path)], 1
        except Exception as exc:
            if not is_cif:
                return None
            found, blocks = [], 1
            caught.append(warnings.WarningMessage(str(exc), UserWarning, "", 0))
    messages = [str(warning.message) for warning in caught]
    if any("Elements in POSCAR cannot be determined" in message for message in messages):
        raise ValueError(
            f"{path}: the POSCAR names no elements (a VASP 4 file): add the line of element "
            "symbols above the atom counts"
        )
    if len(found) < blocks:
        refused = [m for m in messages if m.startswith("No structure parsed")] or messages[-1:]
        reason = "; ".join(" ".join(m.split()) for m in refused) or "no reason given"
        raise ValueError(
            f"{path}: cannot read a structure (pymatgen read {len(found)} of its {blocks} CIF "
            f"block(s): {reason})"
        )
    return found


def structure_label(structure: Any) -> str:
    """The name ``read_structures`` gave a structure (its file, and index in the file)."""
    props = getattr(structure, "properties", None) or getattr(structure, "info", None) or {}
    return str(props.get("label") or props.get("name") or "structure")


def screen_structures(
    config: Any,
    structures: list[Any],
    command: str,
    verb: str,
    build: Callable[[Any, int], Any] | None = None,
) -> list[Any]:
    """What the command runs from for each of ``structures`` a model of ``config`` can take
    (None for the others), each other one named on stderr with the reason of the
    StructureError ``build`` raised (``fastchgnet <command>: skipped structure N name:
    reason``): a command over many files runs the good ones and reports the rest.
    ``build(structure, index)`` makes it: by default the crystal graph
    (``model.potential.graphs_for``), which predict runs; relax keeps the neighbour lists its
    calculators start from (``md.calculator.first_neighbours``), so nothing is searched twice.

    Raises:
        ValueError: none can be taken (one structure: its reason; several: how many, after
            each is named).
    """
    from fastchgnet.errors import StructureError
    from fastchgnet.model.potential import graphs_for

    def crystal_graph(structure: Any, index: int) -> Any:
        return graphs_for(config, [structure], start=index)[0]

    built: list[Any] = []
    problems: list[str] = []
    for index, structure in enumerate(structures):
        try:
            built.append((build or crystal_graph)(structure, index))
        except StructureError as error:
            built.append(None)
            problems.append(str(error))
    if len(problems) == len(structures) == 1:
        raise ValueError(problems[0])
    for problem in problems:
        print(f"fastchgnet {command}: skipped {problem}", file=sys.stderr)
    if len(problems) == len(structures):
        raise ValueError(f"none of the {len(structures)} structures can be {verb}")
    return built


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default where it has one (not None or False) and its
    text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
        if not shown or "default" in text or action.option_strings == []:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def add_model_arguments(parser: Any) -> None:
    """``--model``, ``--device`` and ``--precision`` of the commands that run a model."""
    from fastchgnet.model.precision import PRECISIONS

    parser.add_argument(
        "--model",
        default="0.3.0",
        help="reference version (0.3.0, 0.2.0, r2scan), model file (ours, or chgnet's .pth.tar "
        "or as_dict), a training run's folder (its model.pt, else its newest checkpoint) or a "
        "training checkpoint",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where the model runs: 'cpu', 'cuda', 'cuda:1', ... or 'auto' (default: the "
        "first GPU when one is visible, else the CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="the energy model's arithmetic: bf16 runs its matrix products in bfloat16 "
        "(sums, geometry and outputs stay float32; CHGNet 0.3.0's energies move 4.6 meV/atom "
        "on average)",
    )


def training_checkpoint(spec: str) -> Path | None:
    """The rank-0 file of the training checkpoint ``spec`` names, or None when it names
    anything else (a reference version, a model file, a run folder with its model.pt): a
    checkpoint file, a step folder, or a run folder without model.pt (an interrupted run: its
    newest checkpoint, the one ``model.init`` reads for a run folder)."""
    from fastchgnet.model.io import TRAIN_CHECKPOINT_FORMAT, file_format
    from fastchgnet.train.checkpoint import latest_checkpoint, rank_file

    path = Path(spec)
    if path.is_file():
        return path if file_format(path) == TRAIN_CHECKPOINT_FORMAT else None
    if not path.is_dir() or (path / "model.pt").is_file():
        return None
    checkpoints = path / "checkpoints"
    folder = latest_checkpoint(checkpoints) if checkpoints.is_dir() else path
    if folder is None or not rank_file(folder, 0).is_file():
        return None
    return rank_file(folder, 0)


def load_model(spec: str, precision: str = "float32", device: str = "cpu") -> Any:
    """A reference version ("0.3.0", "0.2.0", "r2scan"), a path to our model file or to
    chgnet's (``model_from_file``), a training run's folder (its ``model.pt``) or a training
    checkpoint (``training_checkpoint``: the weights ``model.init`` reads, named on stderr), on
    ``device`` (``model.device.check_device``'s names; a numbered GPU becomes the current
    device) and set to ``precision`` ("float32" or "bf16": ``FastCHGNet.set_precision``)."""
    from fastchgnet import FastCHGNet

    where = check_device(device, "--device", kinds=("cpu", "cuda"))
    if where.type == "cuda" and where.index is not None:
        # the current device too: CUDA graphs, bf16 checks and streams follow it, not the model
        torch.cuda.set_device(where)
    checkpoint = training_checkpoint(spec)
    if checkpoint is not None:  # read as ``model.init`` reads it
        from fastchgnet.train.model_setup import load_from_path

        model = load_from_path(checkpoint).eval()
        print(f"fastchgnet: weights of training checkpoint {checkpoint}", file=sys.stderr)
        return model.to(where).set_precision(precision, where.type)
    if Path(spec).is_dir():  # a training run's folder: its model.pt
        if not (Path(spec) / "model.pt").is_file():
            raise FileNotFoundError(f"{spec}: a folder without model.pt (name the model file)")
        spec = str(Path(spec) / "model.pt")
    if spec in CHECKPOINTS:
        model = FastCHGNet.from_reference(spec)
    elif not Path(spec).is_file():
        raise FileNotFoundError(f"{spec}: no such model file (or one of {sorted(CHECKPOINTS)})")
    else:
        model = model_from_file(Path(spec))
    return model.to(where).set_precision(precision, where.type)


def model_from_file(path: Path) -> Any:
    """The model in the file at ``path``: ours, or chgnet's (a Trainer .pth.tar, a checkpoint's
    ``model``, ``CHGNet.as_dict()``, said on stderr), read once (``chgnet_files``). Raises
    ValueError naming the file: not a torch file, a state dict alone (weights without the
    model's settings), unsafe, damaged or not a CHGNet."""
    from fastchgnet import FastCHGNet
    from fastchgnet.model.chgnet_files import model_from_checkpoint, read_checkpoint
    from fastchgnet.model.io import FORMAT

    try:
        payload = read_checkpoint(path)  # weights_only: nothing in it runs
    except ValueError as error:
        if "not a torch file" not in str(error):
            raise
        versions = ", ".join(CHECKPOINTS)
        raise ValueError(
            f"{error}; give a fastchgnet model file, a chgnet .pth.tar or a version ({versions})"
        ) from None
    model = model_from_checkpoint(FastCHGNet, payload, path)  # a state dict alone: refused
    if payload.get("format") == FORMAT:
        return model
    config = model.config
    trainer = "optimizer" in payload or "trainer_args" in payload
    kind = "Trainer checkpoint" if trainer else "checkpoint" if "model" in payload else "as_dict"
    print(
        f"fastchgnet: {path}: a chgnet {kind}, read by "
        f"fastchgnet.model.chgnet_files.load_model_file (atom graph {config.atom_cutoff} Å, "
        f"bond graph {config.bond_cutoff} Å)",
        file=sys.stderr,
    )
    return model
