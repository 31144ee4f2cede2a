"""Reusable physics checks for any FastCHGNet model, and the random crystals they run on.

Each ``check_*`` predicts the same crystal twice (rotated, translated, permuted, as a
supercell, displaced, strained, ...) and raises AssertionError naming the quantity and the
deviation when the two disagree beyond ``tolerance``; on success it returns the largest
deviation per quantity. Tolerances scale with the size of the compared numbers:
``atol = tolerance * (1 + max|expected|)``. Use float64 models and batches for the numerical
derivative and cutoff checks.

Over 300 lines on purpose: a catalogue of independent physics checks (one short function
each) that tests and users import from one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from fastchgnet.data.batch import collate
from fastchgnet.data.graph import build_graph
from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.model.potential import predict_structures
from fastchgnet.units import EV_PER_A3_TO_GPA

Result = dict[str, np.ndarray]

#: Relative tolerance per float dtype for exact symmetries (equal up to rounding). float32:
#: eps 1.2e-7, and outputs are sums of O(10^2-10^3) terms through four layers, so rounding
#: reaches ~1e-5 of the output scale; 1e-4 leaves a margin of 10. float64: same reasoning
#: with eps 2.2e-16.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside the block. The checks' crystals are small: intra-op
    threads only add start-up and contention (measured 60x slower with 2 threads on a busy
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_crystal(
    seed: int,
    n_atoms: int,
    *,
    volume_per_atom: tuple[float, float] = (9.0, 18.0),
    min_distance: float = 1.2,
    max_atomic_number: int = 94,
) -> Structure:
    """A random, randomly oriented periodic crystal in which no atom is isolated within 6 Å.

    The lattice has random lengths and angles (60-120°) scaled to ``n_atoms`` times a random
    volume per atom (Å^3); the dense packing guarantees neighbours within 6 Å. Atoms are placed
    uniformly, at least ``min_distance`` Å from every other atom and image. Elements are random.
    """
    rng = np.random.default_rng(seed)
    for _ in range(100):
        lengths = np.exp(rng.uniform(-0.25, 0.25, 3))
        angles = rng.uniform(60.0, 120.0, 3)
        lattice = Lattice.from_parameters(*lengths, *angles).matrix
        volume = abs(np.linalg.det(lattice))
        heights = volume / np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
        if volume < 0.3 or heights.min() < 0.45 * lengths.max():
            continue  # too flat a cell: retry
        target = n_atoms * rng.uniform(*volume_per_atom)
        lattice = lattice * (target / volume) ** (1 / 3) @ random_orthogonal(rng, True).T
        frac = _place_atoms(rng, lattice, n_atoms, min_distance)
        if frac is not None and _shortest_lattice_vector(lattice) >= min_distance:
            numbers = rng.integers(1, max_atomic_number + 1, n_atoms)
            return Structure(lattice, numbers.tolist(), frac)
    raise RuntimeError(f"no random crystal with {n_atoms} atoms found (seed {seed})")


def _image_offsets() -> np.ndarray:
    grid = np.arange(-1, 2)
    return np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)


def _shortest_lattice_vector(lattice: np.ndarray) -> float:
    offsets = _image_offsets()
    offsets = offsets[np.abs(offsets).sum(axis=1) > 0]
    return float(np.linalg.norm(offsets @ lattice, axis=1).min())


def _place_atoms(
    rng: np.random.Generator, lattice: np.ndarray, n_atoms: int, min_distance: float
) -> np.ndarray | None:
    """Random fractional coordinates (n_atoms, 3) with pairwise image distances >= min."""
    images = _image_offsets() @ lattice
    placed: list[np.ndarray] = []
    for _ in range(200 * n_atoms):
        if len(placed) == n_atoms:
            break
        candidate = rng.uniform(0.0, 1.0, 3)
        if placed:
            delta = (np.asarray(placed) - candidate) @ lattice
            distances = np.linalg.norm(delta[:, None, :] + images[None], axis=2)
            if distances.min() < min_distance:
                continue
        placed.append(candidate)
    return np.asarray(placed) if len(placed) == n_atoms else None


def random_orthogonal(rng: np.random.Generator, proper: bool) -> np.ndarray:
    """A random (3, 3) rotation (det +1) or, when not ``proper``, rotoreflection (det -1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q


@torch.no_grad()
def randomize_model(model: FastCHGNet, seed: int) -> FastCHGNet:
    """Randomise what a fresh model leaves trivial, so symmetry checks are not vacuous.

    LayerNorm scales ~U(0.5, 1.5) and shifts ~N(0, 0.3); composition energies ~N(0, 1) eV;
    the last layer of every readout and head ~N(0, 0.3), bias ~N(0, 0.3). In place; returns it.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t) * std

    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
            module.bias.copy_(normal(module.bias, 0.3))
    model.composition.energies.copy_(normal(model.composition.energies, 1.0))
    readouts = [model.energy_readout.mlp]
    if model.direct_heads is not None:
        readouts += [m.mlp for m in model.direct_heads.children() if hasattr(m, "mlp")]
    for sequential in readouts:
        last = sequential[-1]
        last.weight.copy_(normal(last.weight, 0.3))
        last.bias.copy_(normal(last.bias, 0.3))
    return model


def predict(model: FastCHGNet, structures: Sequence[Structure]) -> list[Result]:
    """Per structure ``e`` eV/atom, ``f`` (n, 3) eV/Å, ``s`` (3, 3) GPa, ``m`` (n,) μB."""
    return predict_structures(model, list(structures), batch_size=len(structures))


def total_energies(
    model: FastCHGNet, structures: Sequence[Structure], batch_size: int = 12
) -> np.ndarray:
    """(n_structures,) total energies, eV, batched forwards without derivatives."""
    dtype = next(model.parameters()).dtype
    config = model.config
    model.eval()
    energies = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        graphs = [build_graph(s, config.atom_cutoff, config.bond_cutoff) for s in chunk]
        with torch.no_grad():
            batch = collate(graphs, dtype=dtype)
            prediction = model(batch, compute_forces=False, compute_stress=False)
        energies.append(prediction.total_energy.double().numpy())
    return np.concatenate(energies)


def assert_close(name: str, actual: Any, expected: Any, tolerance: float) -> float:
    """Raise unless |actual - expected| <= tolerance * (1 + max|expected|); return the max."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    deviation = float(np.abs(actual - expected).max(initial=0.0))
    limit = tolerance * (1.0 + float(np.abs(expected).max(initial=0.0)))
    if not deviation <= limit:
        raise AssertionError(f"{name}: max deviation {deviation:.3g} > {limit:.3g}")
    return deviation


def _compare(
    name: str,
    got: Result,
    want: Result,
    tolerance: float,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    magmoms: np.ndarray | None = None,
) -> dict[str, float]:
    """Compare ``got`` with ``want`` after mapping want's forces, stress and magmoms."""
    expected = {
        "e": want["e"],
        "f": want["f"] if forces is None else forces,
        "s": want["s"] if stress is None else stress,
        "m": want["m"] if magmoms is None else magmoms,
    }
    return {k: assert_close(f"{name}: {k}", got[k], v, tolerance) for k, v in expected.items()}


def check_rotation(
    model: FastCHGNet, structure: Structure, rotation: np.ndarray, tolerance: float
) -> dict[str, float]:
    """Rotating (or reflecting) the crystal by ``rotation`` (3, 3): E and m invariant,
    F -> F R^T (rows), S -> R S R^T."""
    rotated = Structure(
        structure.lattice.matrix @ rotation.T, structure.species, structure.frac_coords
    )
    want, got = predict(model, [structure, rotated])
    return _compare(
        "rotation",
        got,
        want,
        tolerance,
        forces=want["f"] @ rotation.T,
        stress=rotation @ want["s"] @ rotation.T,
    )


def check_translation(
    model: FastCHGNet, structure: Structure, shift: np.ndarray, tolerance: float
) -> dict[str, float]:
    """Translating every atom by ``shift`` (3,) Å and wrapping into the cell changes nothing."""
    frac_shift = np.linalg.solve(structure.lattice.matrix.T, shift)
    moved = Structure(
        structure.lattice, structure.species, (structure.frac_coords + frac_shift) % 1.0
    )
    want, got = predict(model, [structure, moved])
    return _compare("translation", got, want, tolerance)


def check_permutation(
    model: FastCHGNet, structure: Structure, order: np.ndarray, tolerance: float
) -> dict[str, float]:
    """Listing the atoms in ``order`` permutes forces and magmoms and changes nothing else."""
    permuted = Structure(
        structure.lattice, [structure.species[k] for k in order], structure.frac_coords[order]
    )
    want, got = predict(model, [structure, permuted])
    return _compare(
        "permutation", got, want, tolerance, forces=want["f"][order], magmoms=want["m"][order]
    )


def check_cell_choice(
    model: FastCHGNet, structure: Structure, matrix: Sequence[Sequence[int]], tolerance: float
) -> dict[str, float]:
    """The same crystal described by the cell ``matrix @ lattice`` (integer (3, 3), e.g.
    diag(2, 1, 1), diag(2, 2, 2) or a shear): same energy per atom and stress, forces and
    magmoms repeated on the copies of each atom."""
    labelled = structure.copy(site_properties={"origin": list(range(len(structure)))})
    other = labelled.make_supercell(np.asarray(matrix), in_place=False)
    origin = np.asarray(other.site_properties["origin"])
    other.remove_site_property("origin")
    want, got = predict(model, [structure, other])
    return _compare(
        f"cell {np.asarray(matrix).tolist()}",
        got,
        want,
        tolerance,
        forces=want["f"][origin],
        magmoms=want["m"][origin],
    )


def check_batching(
    model: FastCHGNet, structures: Sequence[Structure], tolerance: float
) -> dict[str, float]:
    """Predicting structures together in one batch equals predicting each alone."""
    together = predict(model, structures)
    worst: dict[str, float] = {}
    for structure, got in zip(structures, together, strict=True):
        alone = predict(model, [structure])[0]
        for key, value in _compare("batching", got, alone, tolerance).items():
            worst[key] = max(worst.get(key, 0.0), value)
    return worst


def check_net_force_zero(
    model: FastCHGNet, structure: Structure, tolerance: float
) -> dict[str, float]:
    """The forces on all atoms of the cell add up to zero (direct mode: by construction)."""
    forces = predict(model, [structure])[0]["f"]
    scale = np.abs(forces).sum(axis=0)  # rounding grows with the summed magnitudes
    return {"f": assert_close("net force", forces.sum(axis=0) / (1 + scale), 0.0, tolerance)}


def check_stress_symmetric(
    model: FastCHGNet, structure: Structure, tolerance: float
) -> dict[str, float]:
    """The stress tensor equals its transpose."""
    stress = predict(model, [structure])[0]["s"]
    deviation = assert_close("stress symmetry", stress, stress.T, tolerance)
    return {"s": deviation}


#: Five-point central difference: f'(x) ~ sum_k w_k f(x + k h) / h, error h^4 f^(5) / 30.
STENCIL = ((2, -1 / 12), (1, 8 / 12), (-1, -8 / 12), (-2, 1 / 12))


def _derivatives(
    model: FastCHGNet, make: Callable[[int, float], Structure], n: int, step: float
) -> np.ndarray:
    """(n,) five-point derivatives of the total energy along ``n`` directions: direction d
    moved by x is the structure ``make(d, x)``."""
    variants = [make(d, k * step) for d in range(n) for k, _ in STENCIL]
    energies = total_energies(model, variants).reshape(n, len(STENCIL))
    return energies @ np.array([w for _, w in STENCIL]) / step


def check_numerical_forces(
    model: FastCHGNet, structure: Structure, step: float, tolerance: float
) -> dict[str, float]:
    """Forces equal minus the five-point central difference gradient of the total energy
    (``step`` in Å)."""
    cart = structure.cart_coords

    def displaced(direction: int, shift: float) -> Structure:
        moved = cart.copy()
        moved.reshape(-1)[direction] += shift
        return Structure(structure.lattice, structure.species, moved, coords_are_cartesian=True)

    numerical = -_derivatives(model, displaced, cart.size, step).reshape(-1, 3)
    forces = predict(model, [structure])[0]["f"]
    return {"f": assert_close("numerical forces", forces, numerical, tolerance)}


def check_numerical_stress(
    model: FastCHGNet, structure: Structure, step: float, tolerance: float
) -> dict[str, float]:
    """Stress equals (1/V) dE/dstrain by five-point central differences: lattice and positions
    deformed by (1 + strain), strain component (a, b) moved by ``step``; GPa, CHGNet's sign."""
    lattice = structure.lattice.matrix

    def strained(component: int, amount: float) -> Structure:
        deformation = np.eye(3)
        deformation.reshape(-1)[component] += amount
        return Structure(lattice @ deformation, structure.species, structure.frac_coords)

    numerical = _derivatives(model, strained, 9, step).reshape(3, 3)
    numerical *= EV_PER_A3_TO_GPA / abs(np.linalg.det(lattice))
    stress = predict(model, [structure])[0]["s"]
    return {"s": assert_close("numerical stress", stress, numerical, tolerance)}


def check_cutoff_continuity(
    model: FastCHGNet, structure: Structure, cutoff: float, step: float, tolerance: float
) -> dict[str, float]:
    """No jump as an atom pair crosses ``cutoff`` (Å): one atom of the pair nearest the cutoff
    is moved along the pair so their distance is ``cutoff + k * step``, k = -3, -1, 1, 3. Per
    quantity (e, f, s, m) the step across the cutoff may be at most 3 times the larger of the
    two steps beside it (equal to first order for a smooth function) plus
    ``tolerance * (1 + max|q|)``. Returns the largest cross-cutoff step per quantity."""
    lattice, cart = structure.lattice.matrix, structure.cart_coords
    graph = build_graph(structure, cutoff + 2.0, min(0.5, cutoff))
    i, j = graph.bond_atoms.T
    lengths = np.where(i != j, graph.bond_lengths(), np.inf)
    pair = int(np.argmin(np.abs(lengths - cutoff)))
    vector = cart[j[pair]] + graph.bond_images[pair] @ lattice - cart[i[pair]]
    unit = vector / np.linalg.norm(vector)
    moved = []
    for k in (-3, -1, 1, 3):
        positions = cart.copy()
        positions[j[pair]] += (cutoff + k * step - lengths[pair]) * unit
        moved.append(Structure(lattice, structure.species, positions, coords_are_cartesian=True))
    results = predict(model, moved)
    jumps = {}
    for key in ("e", "f", "s", "m"):
        q = [np.asarray(r[key], np.float64) for r in results]
        across = float(np.abs(q[2] - q[1]).max())
        beside = max(float(np.abs(q[1] - q[0]).max()), float(np.abs(q[3] - q[2]).max()))
        limit = 3.0 * beside + tolerance * (1.0 + float(np.abs(q[1]).max()))
        if not across <= limit:
            raise AssertionError(
                f"{key} jumps by {across:.3g} crossing {cutoff} Å (steps beside: {beside:.3g})"
            )
        jumps[key] = across
    return jumps
