"""``synth``: a labelled data set of varied crystals, labels from the reference CHGNet.

Structures come from ``synthetic.varied_structures`` (prototypes with random elements across
the periodic table, strained, rattled, tiled), reproducible from a seed. Labels are the
reference ``chgnet`` package's predictions (energy, forces, stress, magnetic moments), so the
set needs ``pip install chgnet`` to build but not to use. The file is extxyz (gzip when the name
ends in .gz), readable by ``fastchgnet.data.sources.read_ase`` and ``fastchgnet data convert``:
energy eV (total), forces eV/Å, stress eV/Å^3 with ASE's sign (= CHGNet's sign, see
``read_ase``), magmoms μB.

The bundled quick-start set ``fastchgnet/resources/quickstart.extxyz.gz`` (6000 crystals; its first
2000 are the earlier 2000-crystal set: the generator draws them in the same order) was made by::

    fastchgnet data synth -n 6000 --seed 7 --max-atoms 16 \
        -o fastchgnet/resources/quickstart.extxyz.gz
"""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np

from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.files import atomic_write_bytes
from fastchgnet.units import EV_PER_A3_TO_GPA


def label_with_reference(
    structures: list, model_name: str = "0.3.0", batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """Reference CHGNet predictions per structure: e () eV/atom, f (n, 3) eV/Å,
    s (3, 3) GPa (CHGNet sign), m (n,) μB."""
    import torch
    from chgnet.model import CHGNet

    torch.set_num_threads(1)  # on a shared CPU, spinning OpenMP threads slow this down badly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
        predictions = model.predict_structure(
            structures, task="efsm", batch_size=batch_size, return_site_energies=False
        )
    return predictions


def to_atoms(structure: object, prediction: dict[str, np.ndarray], material_id: str) -> object:
    """ASE Atoms carrying the prediction as single-point calculator results (ASE units)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    n = len(atoms)
    stress = full_3x3_to_voigt_6_stress(np.asarray(prediction["s"]) / EV_PER_A3_TO_GPA)
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=float(prediction["e"]) * n,
        forces=np.asarray(prediction["f"], dtype=np.float64),
        stress=stress,
        magmoms=np.asarray(prediction["m"], dtype=np.float64),
    )
    atoms.info = {"material_id": material_id, "prototype": structure.properties.get("label", "")}
    return atoms


def synth(
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    max_atoms: int = 16,
    model_name: str = "0.3.0",
    batch_size: int = 32,
) -> Path:
    """Write ``n`` varied crystals labelled by the reference CHGNet to ``out`` (extxyz[.gz]).

    Args:
        n: number of structures.
        out: output path; written atomically; gzip-compressed when it ends in ``.gz``.
        seed: structures (and so the labels) are a deterministic function of the seed.
        max_atoms: largest supercell, atoms.
        model_name: reference checkpoint labelling the structures ("0.3.0", ...).
        batch_size: structures per reference call.

    Returns:
        The path written.
    """
    from ase.io import write

    out = Path(out)
    structures = varied_structures(n, seed=seed, max_atoms=max_atoms)
    predictions = label_with_reference(structures, model_name, batch_size)
    images = [
        to_atoms(s, p, f"synth-{seed}-{k:05d}")
        for k, (s, p) in enumerate(zip(structures, predictions, strict=True))
    ]
    text = io.StringIO()
    write(text, images, format="extxyz")
    data = text.getvalue().encode()
    if out.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: same bytes every run
    atomic_write_bytes(out, data)
    return out
