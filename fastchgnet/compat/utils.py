"""chgnet's ``chgnet.utils`` names: ``read_json``, ``write_json``, ``determine_device``,
``parse_vasp_dir`` (over our VASP reader, ``fastchgnet.data.sources.vasp.read_vasp``),
``solve_charge_by_mag``, and the small helpers ``AverageMeter``, ``mae``, ``mkdir`` and
``cuda_devices_sorted_by_free_mem``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

from fastchgnet.compat.model import determine_device
from fastchgnet.data.sources.vasp import read_vasp
from fastchgnet.units import KBAR_TO_GPA

#: chgnet's default magnetic moment (μB) ranges -> oxidation state, and fixed ones.
DEFAULT_OX = {"Li": 1, "O": -2}
DEFAULT_OX_RANGES = {
    "Mn": {(0.5, 1.5): 2, (1.5, 2.5): 3, (2.5, 3.5): 4, (3.5, 4.2): 3, (4.2, 5): 2}
}


def read_json(filepath: str) -> dict:
    """The JSON data in ``filepath``."""
    with open(filepath) as handle:
        return json.load(handle)


def _plain(obj: object) -> Any:
    """numpy scalars and arrays as JSON numbers and lists."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json(dct: dict, filepath: str) -> None:
    """Write ``dct`` to ``filepath`` as JSON (numpy numbers and arrays as plain ones)."""
    with open(filepath, mode="w") as handle:
        json.dump(dct, handle, default=_plain)


def parse_vasp_dir(
    base_dir: str, *, check_electronic_convergence: bool = True, save_path: str | None = None
) -> dict[str, list]:
    """The ionic steps of the VASP run in ``base_dir`` as chgnet's lists: ``structure``,
    ``uncorrected_total_energy`` (eV), ``energy_per_atom`` (eV/atom), ``force`` (eV/Å),
    ``magmom`` (μB, from OUTCAR; [] when it has none) and ``stress`` (kBar, VASP's sign; None
    without stress). Steps whose electronic loop hit NELM are left out when
    ``check_electronic_convergence``. Written to ``save_path`` as JSON when given.

    Two differences from chgnet: energies are OSZICAR's E0 (chgnet reads vasprun.xml's
    ``e_0_energy``, wrong in some VASP versions) and magnetic moments are absolute, as
    chgnet's training reads them.
    """
    if not Path(base_dir).is_dir():
        raise NotADirectoryError(f"{base_dir=} is not a directory")
    with warnings.catch_warnings():
        if not check_electronic_convergence:
            warnings.simplefilter("ignore")
        frames = list(read_vasp(base_dir, skip_unconverged=check_electronic_convergence))
    if not frames:
        raise RuntimeError(f"No data parsed from {base_dir}!")
    has_stress = frames[0].stress is not None
    dataset: dict[str, Any] = {
        "structure": [frame.structure for frame in frames],
        "uncorrected_total_energy": [
            frame.energy_per_atom * len(frame.structure) for frame in frames
        ],
        "energy_per_atom": [frame.energy_per_atom for frame in frames],
        "force": [frame.forces for frame in frames],
        "magmom": [frame.magmoms.tolist() for frame in frames if frame.magmoms is not None],
        "stress": [frame.stress / KBAR_TO_GPA for frame in frames] if has_stress else None,
    }
    if save_path is not None:
        write_json(dataset | {"structure": [s.as_dict() for s in dataset["structure"]]}, save_path)
    return dataset


def solve_charge_by_mag(
    structure: Structure,
    default_ox: dict[str, float] | None = None,
    ox_ranges: dict[str, dict[tuple[float, float], int]] | None = None,
) -> Structure | None:
    """A copy of ``structure`` with oxidation states from its ``final_magmom`` (or
    ``magmom``) site property (μB): elements of ``ox_ranges`` by the range holding their
    moment, those of ``default_ox`` fixed; None (with a warning) when a site gets none."""
    default_ox = default_ox or DEFAULT_OX
    ox_ranges = ox_ranges or DEFAULT_OX_RANGES
    properties = structure.site_properties
    magmoms = properties.get("final_magmom", properties.get("magmom"))
    if magmoms is None and any(site.species_string in ox_ranges for site in structure):
        raise ValueError("solve_charge_by_mag: the structure has no magmom site property")
    out = structure.copy()
    out.remove_oxidation_states()
    states = []
    for index, site in enumerate(out):
        symbol = site.species_string
        if symbol in ox_ranges:
            found = [
                ox for (low, high), ox in ox_ranges[symbol].items() if low <= magmoms[index] < high
            ]
            state = found[0] if found else None
        else:
            state = default_ox.get(symbol)
        if state is None:
            warnings.warn("Failed to solve oxidation state", stacklevel=2)
            return None
        states.append(state)
    print(f"Solved oxidation state, total_charge={sum(states)}")
    out.add_oxidation_state_by_site(states)
    return out


class AverageMeter:
    """The running average of the values given to ``update`` (``val``, ``avg``, ``sum``,
    ``count``), as chgnet's."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start again from nothing."""
        self.val = self.avg = self.sum = self.count = 0.0

    def update(self, val: float, n: int = 1) -> None:
        """Add ``val`` ``n`` times."""
        self.val = val
        self.sum += val * n
        self.count += n
        if self.count != 0:
            self.avg = self.sum / self.count


def mae(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean absolute error of ``prediction`` against ``target`` (0-d tensor)."""
    return torch.mean(torch.abs(target - prediction))


def mkdir(path: str) -> str:
    """Make the folder ``path`` (with its parents) unless it exists ("Folder exists" is
    printed then, as chgnet); returns ``path``."""
    if os.path.exists(path):
        print("Folder exists")
    else:
        os.makedirs(path)
    return path


def cuda_devices_sorted_by_free_mem() -> list[int]:
    """The CUDA device numbers by increasing free memory (the last has the most); [] without
    CUDA. chgnet asks NVML; this asks torch (``torch.cuda.mem_get_info``)."""
    if not torch.cuda.is_available():
        return []
    free = [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]
    return sorted(range(len(free)), key=free.__getitem__)


__all__ = [
    "AverageMeter",
    "cuda_devices_sorted_by_free_mem",
    "determine_device",
    "mae",
    "mkdir",
    "parse_vasp_dir",
    "read_json",
    "solve_charge_by_mag",
    "write_json",
]
