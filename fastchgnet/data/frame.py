"""``Frame``: one labelled structure, in our units, as every source yields it; ``check_frame``
judges whether it can be trained on; ``implausible_labels`` is the one magnitude check every
source applies to the labels it read, and ``unreadable_frame`` stands for a record that a source
could not read (both end in ``Frame.problem``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from fastchgnet.data.graph import atomic_numbers, check_lattice, formula
from fastchgnet.errors import StructureError
from fastchgnet.units import MAX_ATOMIC_NUMBER

#: Label magnitudes (our units) beyond which a label points at a wrong unit or a total energy
#: read as per atom, not at physics: a source gives such a frame a problem
#: (``implausible_labels``), so conversion skips it and the statistics list it as unusable.
MAX_ENERGY_PER_ATOM = 50.0  # eV/atom
MAX_STRESS_GPA = 1000.0  # GPa
#: A stress label's largest ``|s_ij - s_ji|`` that ``stress_asymmetry`` takes for round-off:
#: this many GPa, or this fraction of its largest component, whichever is more
STRESS_ASYMMETRY_GPA = 1e-2  # GPa (0.1 kBar)
STRESS_ASYMMETRY_RELATIVE = 1e-4


@dataclass
class Frame:
    """One labelled structure (one ionic step of one material).

    Fields (shape | unit):
        structure        pymatgen Structure                    | Å
        energy_per_atom  float | None                          | eV/atom
        forces           (n_atoms, 3) float64 | None           | eV/Å
        stress           (3, 3) float64 | None                 | GPa, CHGNet sign
        magmoms          (n_atoms,) float64 | None             | |μB| (absolute values)
        material_id      str                                   | frames of one material share it
        frame_id         str                                   | unique within a source
        problem          str | None                            | why a frame read from its
            source cannot be trained on (e.g. no periodic cell: its ``structure`` then holds
            only the species); ``check_frame`` raises it, so conversion lists the frame as
            skipped and the statistics as unusable
    """

    structure: Structure
    energy_per_atom: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    magmoms: np.ndarray | None = None
    material_id: str = ""
    frame_id: str = ""
    problem: str | None = None

    @property
    def name(self) -> str:
        """Name for messages: frame id, material id and formula (``graph.formula``; none for
        a frame whose species a source could not read); the material id alone for an entry
        without a frame id (a material or file part that a source could not read)."""
        numbers = atomic_numbers(self.structure)
        name = f"frame {self.frame_id} of {self.material_id}"
        if self.material_id and not self.frame_id:
            name = self.material_id
        return f"{name} ({formula(numbers)})" if numbers.size else name


def species_only(species: list[str]) -> Structure:
    """A Structure of ``species`` alone at the origin of a zero cell: what a frame that cannot
    be trained on keeps of its structure, for its name (``Frame.name``)."""
    return Structure(Lattice(np.zeros((3, 3))), species, np.zeros((len(species), 3)))


def unreadable_frame(
    material_id: str, frame_id: str, problem: str, species: list[str] | None = None
) -> Frame:
    """A frame that a source could not read (a record without a structure, a disordered one,
    a label that is not numbers): its ids, its ``species`` where known, and the problem."""
    return Frame(
        structure=species_only(species or []),
        material_id=material_id,
        frame_id=frame_id,
        problem=problem,
    )


class ImplausibleLabels(str):
    """The problem ``implausible_labels`` gives a frame: its text (the first label beyond its
    limit), and ``beyond``, each label beyond its limit as ``{label: (magnitude, limit)}``
    ("energy": eV/atom, "stress": its largest component, GPa), which conversion counts per
    source (``unit_check``) without reading the text."""

    beyond: dict[str, tuple[float, float]]

    def __new__(cls, text: str, beyond: dict[str, tuple[float, float]]) -> ImplausibleLabels:
        problem = super().__new__(cls, text)
        problem.beyond = dict(beyond)
        return problem

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, tuple[float, float]]]]:
        return ImplausibleLabels, (str(self), self.beyond)  # to workers and back, whole


def implausible_labels(
    frame: Frame,
    max_energy_per_atom: float = MAX_ENERGY_PER_ATOM,
    max_stress_gpa: float = MAX_STRESS_GPA,
    energy_hint: str = "a wrong unit, or a total energy read as per atom?",
    stress_hint: str = "a wrong unit?",
) -> ImplausibleLabels | None:
    """The problem of a frame whose energy per atom or largest stress component is beyond
    these magnitudes (``MAX_ENERGY_PER_ATOM``, ``MAX_STRESS_GPA``), or None. Every source
    sets ``Frame.problem`` from it (the ASE reader with the limits and hints of its
    ``AseLabels``); non-finite labels are left to ``check_frame``. The text names the energy
    where both are beyond; ``ImplausibleLabels.beyond`` holds both."""
    texts, beyond = [], {}
    energy = frame.energy_per_atom
    if energy is not None and np.isfinite(energy) and abs(energy) > max_energy_per_atom:
        beyond["energy"] = (abs(float(energy)), float(max_energy_per_atom))
        texts.append(
            f"energy {energy:.4g} eV/atom exceeds {max_energy_per_atom} eV/atom: {energy_hint}"
        )
    stress = frame.stress
    if stress is not None and np.isfinite(stress).any():  # inf, nan: check_frame says so
        largest = float(np.abs(stress[np.isfinite(stress)]).max())
        if largest > max_stress_gpa:
            beyond["stress"] = (largest, float(max_stress_gpa))
            texts.append(
                f"stress up to {largest:.4g} GPa exceeds {max_stress_gpa} GPa: {stress_hint}"
            )
    return ImplausibleLabels(texts[0], beyond) if texts else None


def periodic_structure(atoms: Any) -> tuple[Structure, str | None]:
    """(structure, problem) of ASE ``atoms`` read from a dataset: pymatgen's Structure of it,
    and None; or, when ``graph.check_lattice`` refuses its cell (not finite, or less than
    ``MIN_CELL_VOLUME`` Å^3: a molecule written without a box) or its ``pbc`` is not True in
    all three directions (a molecule or a slab: its images would become bonds), ``species_only``
    of its species, and the problem, for ``Frame.problem``."""
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        check_lattice(np.asarray(atoms.cell.array, dtype=np.float64), "")
    except StructureError as error:
        return species_only(list(atoms.get_chemical_symbols())), (
            f"no periodic cell ({error.problem}): a crystal needs three lattice vectors; put a "
            "molecule in a box"
        )
    pbc = np.asarray(atoms.pbc, dtype=bool).reshape(-1)
    if not pbc.all():
        flags = ", ".join("T" if p else "F" for p in pbc)
        return species_only(list(atoms.get_chemical_symbols())), (
            f"pbc ({flags}): CHGNet models periodic crystals; not all three directions periodic"
        )
    return AseAtomsAdaptor.get_structure(atoms), None


#: keys (``atoms.info`` or an ASE-db row's key-value pairs) that name a frame's material
MATERIAL_ID_KEYS = ("material_id", "mp_id")


def ase_material_id(atoms: Any, stem: str) -> str:
    """The material id of ASE ``atoms`` read from the file named ``stem``: the first of
    ``MATERIAL_ID_KEYS`` in ``atoms.info`` or, for an ASE-db row, in its key-value pairs
    (``info["key_value_pairs"]``); else ``"<stem>:<reduced formula>"``, so that frames of one
    composition stay in one split."""
    tables = (atoms.info, atoms.info.get("key_value_pairs") or {})
    for table in tables:
        for key in MATERIAL_ID_KEYS:
            if table.get(key) is not None:
                return str(table[key])
    return f"{stem}:{reduced_formula(atoms.get_chemical_formula())}"


def reduced_formula(composition: Composition | str) -> str:
    """pymatgen's reduced formula (``Composition.reduced_formula``, e.g. ``LiMnO2``), the part
    of a material id that sources without one derive, without pymatgen's warning for each
    noble gas (its electronegativity sort gives them NaN, which changes nothing here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No Pauling electronegativity", UserWarning)
        return Composition(composition).reduced_formula


def check_frame(frame: Frame) -> None:
    """Raise ``StructureError`` naming the frame if it cannot be trained on.

    Checks: elements with Z in 1..94, finite labels, label shapes matching the atom count, a
    symmetric stress (``stress_asymmetry``).
    Graph problems (isolated atoms, zero volume, NaN coordinates) are found by ``build_graph``.
    """
    if frame.problem:
        raise StructureError(frame.name, frame.problem)
    numbers = atomic_numbers(frame.structure)
    n_atoms = numbers.shape[0]
    bad = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
    if bad.any():
        raise StructureError(
            frame.name, f"element(s) Z={sorted(set(numbers[bad].tolist()))} outside 1..94"
        )
    if frame.energy_per_atom is not None and not np.isfinite(frame.energy_per_atom):
        raise StructureError(frame.name, f"energy_per_atom is {frame.energy_per_atom}")
    expected = {"forces": (n_atoms, 3), "stress": (3, 3), "magmoms": (n_atoms,)}
    for label, shape in expected.items():
        value = getattr(frame, label)
        if value is None:
            continue
        if value.shape != shape:
            raise StructureError(frame.name, f"{label} has shape {value.shape}, expected {shape}")
        if not np.isfinite(value).all():
            raise StructureError(frame.name, f"{label} has non-finite entries")
    if frame.stress is not None and (problem := stress_asymmetry(frame.stress)):
        raise StructureError(frame.name, problem)


def stress_asymmetry(stress: np.ndarray) -> str | None:
    """The problem of a (3, 3) stress label (GPa) that is not symmetric, or None.

    A Cauchy stress is symmetric; one whose off-diagonal pairs differ is wrong data (a Voigt
    order misread as a flat 3x3, columns shifted), not a label to train on. The largest
    asymmetry ``max |s_ij - s_ji|`` (GPa) may be at most ``STRESS_ASYMMETRY_GPA`` (0.01 GPa)
    or ``STRESS_ASYMMETRY_RELATIVE`` (1e-4) times the largest ``|s_ij|``, whichever is more:
    VASP writes stress in kBar with at least five decimals, so its round-off, x 0.1 in GPa,
    stays orders of magnitude below (the reference VASP runs and the bundled quickstart data
    are symmetric to 1e-8 GPa)."""
    difference = np.abs(stress - stress.T)
    i, j = np.unravel_index(int(np.argmax(difference)), (3, 3))
    asymmetry = float(difference[i, j])
    allowed = max(STRESS_ASYMMETRY_GPA, STRESS_ASYMMETRY_RELATIVE * float(np.abs(stress).max()))
    if asymmetry <= allowed:
        return None
    pair, reverse = "xyz"[i] + "xyz"[j], "xyz"[j] + "xyz"[i]
    return (
        f"stress is not symmetric: {pair} and {reverse} differ by {asymmetry:.4g} GPa (round-off "
        f"allows {allowed:.3g} GPa); a stress tensor is symmetric, is the label misread?"
    )
