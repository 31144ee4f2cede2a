"""The direct force and stress heads: Newton's third law, the virial's sign, cell choice."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastchgnet import FastCHGNet, build_graph, collate
from fastchgnet.model.direct_heads import (
    PairMagnitude,
    lattice_normals,
    pair_atom_sums,
    pair_forces,
    pair_virial,
    structure_volume,
)
from fastchgnet.model.layers import pair_ends
from fastchgnet.testing import (
    TOLERANCE,
    check_cell_choice,
    check_net_force_zero,
    check_rotation,
    check_stress_symmetric,
    predict,
    random_crystal,
    random_orthogonal,
    randomize_model,
    single_threaded,
)
from fastchgnet.units import EV_PER_A3_TO_GPA

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
SHEAR = [[1, 1, 0], [0, 1, 0], [0, -1, 1]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_threaded():
        yield


@functools.cache
def direct_model(coupled: bool, stress_head: str, dtype: torch.dtype) -> FastCHGNet:
    torch.manual_seed(5)
    model = FastCHGNet(forces="direct", coupled_updates=coupled, stress_head=stress_head)
    return randomize_model(model, seed=6).to(dtype).eval()


def crystal_batch(dtype: torch.dtype, seeds=(1, 2, 3)):
    crystals = [random_crystal(seed, 2 + seed) for seed in seeds]
    return collate([build_graph(c) for c in crystals], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "decoupled"])
@pytest.mark.parametrize("stress_head", ["virial", "lattice"])
@settings(max_examples=10, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n_atoms=st.integers(1, 12))
def test_direct_net_force_is_zero_and_stress_symmetric(stress_head, coupled, dtype, seed, n_atoms):
    model = direct_model(coupled, stress_head, dtype)
    crystal = random_crystal(seed, n_atoms)
    check_net_force_zero(model, crystal, TOLERANCE[dtype])
    check_stress_symmetric(model, crystal, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_forces_obey_newtons_third_law(dtype):
    generator = torch.Generator().manual_seed(0)
    n_atoms, n_bonds = 7, 40
    bond_atoms = torch.randint(0, n_atoms, (n_bonds, 2), generator=generator)
    vectors = torch.randn(n_bonds, 3, generator=generator, dtype=dtype)
    units = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    magnitudes = torch.randn(n_bonds, generator=generator, dtype=dtype)
    forces = pair_forces(magnitudes, units, pair_ends(bond_atoms), n_atoms)
    # the same bonds seen from the other end: (j, i) and -u give the same forces
    flipped = pair_forces(magnitudes, -units, pair_ends(bond_atoms.flip(1)), n_atoms)
    scale = float(magnitudes.abs().sum())
    assert torch.allclose(forces, flipped, atol=TOLERANCE[dtype] * scale)
    assert float(forces.sum(0).abs().max()) <= TOLERANCE[dtype] * scale


def test_pair_magnitude_is_symmetric_in_the_two_atoms_and_zero_beyond_the_cutoff():
    torch.manual_seed(0)
    head = PairMagnitude(8, 5, (16,), "layer", cutoff=6.0, envelope_order=8).double()
    atoms, bonds = torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    bond_atoms = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 1]])
    lengths = torch.tensor([1.0, 2.0, 3.0, 5.99, 6.0, 7.0], dtype=torch.float64)
    forward = head(pair_atom_sums(atoms, pair_ends(bond_atoms)), bonds, lengths)
    flipped = pair_atom_sums(atoms, pair_ends(bond_atoms.flip(1)))
    assert torch.equal(forward, head(flipped, bonds, lengths))
    assert torch.equal(flipped, atoms[bond_atoms[:, 0]] + atoms[bond_atoms[:, 1]])
    assert (forward[:4] != 0).all()
    assert (forward[4:] == 0).all()


def pair_energy_derivatives(batch, strength: float, decay: float):
    """Conservative forces (eV/Å) and stress (GPa) of E = sum_b A exp(-r_b / decay), through
    FastCHGNet's own strain machinery; and dphi/dr per bond."""
    positions, strain, vectors = FastCHGNet.geometry(batch, forces=True, stress=True)
    lengths = torch.linalg.vector_norm(vectors, dim=1)
    energy = (strength * torch.exp(-lengths / decay)).sum()
    d_positions, d_strain = torch.autograd.grad(energy, [positions, strain])
    volume = structure_volume(batch.lattice)
    stress = d_strain * (EV_PER_A3_TO_GPA / volume)[:, None, None]
    slope = -strength / decay * torch.exp(-lengths / decay)
    return -d_positions, stress, vectors.detach(), slope.detach()


def test_pair_forces_and_virial_equal_the_derivatives_of_a_pair_energy():
    """Fixes the sign convention: the virial head is CHGNet's (1/V) dE/dstrain."""
    batch = crystal_batch(torch.float64)
    forces, stress, vectors, slope = pair_energy_derivatives(batch, 2.0, 0.7)
    units = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    n_atoms = batch.atomic_numbers.shape[0]
    # float64, both sides the same sums in another order: rounding only (~1e-14 relative)
    found = pair_forces(slope, units, pair_ends(batch.bond_atoms), n_atoms)
    assert torch.allclose(found, forces, atol=1e-10)
    virial = pair_virial(slope, vectors, batch.bond_structure, structure_volume(batch.lattice))
    assert torch.allclose(virial, stress, rtol=1e-10, atol=1e-10)


def test_compressed_crystal_has_negative_stress_in_virial_and_reference(reference_structures):
    """CHGNet's sign: a compressed crystal has negative stress (VASP reports it positive).
    A repulsive pair energy's virial and the reference model's strain derivative agree."""
    pytest.importorskip("chgnet")
    crystal = reference_structures[0].copy()
    crystal.scale_lattice(crystal.volume * 0.8)
    batch = collate([build_graph(crystal)], dtype=torch.float64)
    _, stress, vectors, slope = pair_energy_derivatives(batch, 2.0, 0.7)
    virial = pair_virial(slope, vectors, batch.bond_structure, structure_volume(batch.lattice))
    assert torch.allclose(virial, stress, rtol=1e-10, atol=1e-10)
    assert (torch.linalg.eigvalsh(virial[0]) < 0).all()
    reference = FastCHGNet.from_reference("0.3.0").double()
    assert np.trace(predict(reference, [crystal])[0]["s"]) < 0


def test_lattice_normals_are_unit_and_perpendicular_to_the_other_two_vectors():
    lattice = torch.tensor(random_crystal(4, 3).lattice.matrix).unsqueeze(0)
    normals = lattice_normals(lattice)[0]
    assert torch.allclose(
        torch.linalg.vector_norm(normals, dim=1), torch.ones(3, dtype=torch.float64)
    )
    products = lattice[0] @ normals.T  # a_k . n_l vanishes for k != l
    assert torch.allclose(
        products - torch.diag(torch.diag(products)),
        torch.zeros(3, 3, dtype=torch.float64),
        atol=1e-12,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_lattice_stress_head_rotates_and_tiles_but_depends_on_the_cell_choice(dtype):
    """Why the virial head is the default: the lattice head is symmetric, rotation-equivariant
    and unchanged by diagonal supercells (same unit normals, same mean atom feature), but a
    sheared cell of the same crystal changes its stress; the virial head's does not."""
    lattice_model = direct_model(True, "lattice", dtype)
    crystal = random_crystal(8, 5)
    rotation = random_orthogonal(np.random.default_rng(0), proper=False)
    check_rotation(lattice_model, crystal, rotation, TOLERANCE[dtype])
    check_cell_choice(lattice_model, crystal, np.diag([2, 2, 1]), TOLERANCE[dtype])
    with pytest.raises(AssertionError, match=r": s: max deviation"):
        check_cell_choice(lattice_model, crystal, SHEAR, TOLERANCE[dtype])
    check_cell_choice(direct_model(True, "virial", dtype), crystal, SHEAR, TOLERANCE[dtype])
