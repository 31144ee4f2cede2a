"""Physics of every model mode on random crystals: symmetries, cell choice, derivatives, cutoffs.

Every mode (conservative/direct forces x coupled/decoupled updates) runs in float32 and
float64 with seeded random weights (LayerNorms, composition and readouts randomised by
``randomize_model``); the conservative checks also run with the reference 0.3.0 weights.
Tolerances: ``fastchgnet.testing.TOLERANCE`` for exact symmetries (equal up to rounding, see
there); derivative and cutoff tolerances are justified where they are used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastchgnet import FastCHGNet
from fastchgnet.testing import (
    TOLERANCE,
    check_batching,
    check_cell_choice,
    check_cutoff_continuity,
    check_numerical_forces,
    check_numerical_stress,
    check_permutation,
    check_rotation,
    check_translation,
    random_crystal,
    random_orthogonal,
    randomize_model,
    single_threaded,
)

MODES = [
    pytest.param("conservative", True, id="conservative-coupled"),
    pytest.param("conservative", False, id="conservative-decoupled"),
    pytest.param("direct", True, id="direct-coupled"),
    pytest.param("direct", False, id="direct-decoupled"),
]
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
#: fast: a few small crystals for every CI run; slow: more and larger crystals (1-30 atoms).
SIZES = [pytest.param(False, id="fast"), pytest.param(True, id="slow", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_threaded():
        yield


@functools.cache
def random_model(forces: str, coupled: bool, dtype: torch.dtype) -> FastCHGNet:
    """A seeded random-weight model of the given mode (same weights in both dtypes)."""
    torch.manual_seed(7)
    model = FastCHGNet(forces=forces, coupled_updates=coupled)
    return randomize_model(model, seed=11).to(dtype).eval()


@functools.cache
def reference_model(dtype: torch.dtype) -> FastCHGNet:
    pytest.importorskip("chgnet")
    return FastCHGNet.from_reference("0.3.0").to(dtype).eval()


def run_property(
    slow: bool,
    check: Callable[..., object],
    max_atoms: int = 8,
    slow_max_atoms: int = 30,
    **strategies: object,
) -> None:
    """Run ``check(seed, n_atoms, **drawn)`` on hypothesis-drawn random crystals."""
    n_max = slow_max_atoms if slow else max_atoms

    @settings(max_examples=25 if slow else 10, deadline=None, database=None, derandomize=not slow)
    @given(seed=st.integers(0, 2**31 - 1), n_atoms=st.integers(1, n_max), **strategies)
    def inner(seed: int, n_atoms: int, **drawn: object) -> None:
        check(seed, n_atoms, **drawn)

    inner()


@pytest.mark.parametrize("slow", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("forces", "coupled"), MODES)
def test_energy_invariant_and_forces_stress_rotate_with_structure(forces, coupled, dtype, slow):
    model = random_model(forces, coupled, dtype)

    def check(seed: int, n_atoms: int, proper: bool) -> None:
        rotation = random_orthogonal(np.random.default_rng(seed), proper)
        check_rotation(model, random_crystal(seed, n_atoms), rotation, TOLERANCE[dtype])

    run_property(slow, check, proper=st.booleans())


@pytest.mark.parametrize("slow", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("forces", "coupled"), MODES)
def test_predictions_unchanged_by_translation(forces, coupled, dtype, slow):
    model = random_model(forces, coupled, dtype)

    def check(seed: int, n_atoms: int) -> None:
        shift = np.random.default_rng(seed).normal(scale=3.0, size=3)
        check_translation(model, random_crystal(seed, n_atoms), shift, TOLERANCE[dtype])

    run_property(slow, check)


@pytest.mark.parametrize("slow", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("forces", "coupled"), MODES)
def test_forces_and_magmoms_permute_with_atoms(forces, coupled, dtype, slow):
    model = random_model(forces, coupled, dtype)

    def check(seed: int, n_atoms: int) -> None:
        order = np.random.default_rng(seed).permutation(n_atoms)
        check_permutation(model, random_crystal(seed, n_atoms), order, TOLERANCE[dtype])

    run_property(slow, check)


@pytest.mark.parametrize("slow", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("forces", "coupled"), MODES)
def test_supercells_and_sheared_cells_describe_the_same_crystal(forces, coupled, dtype, slow):
    """2x1x1, 2x2x2 and a unimodular shear of the cell: same energy per atom and stress,
    forces and magmoms tiled."""
    model = random_model(forces, coupled, dtype)
    shear = [[1, 1, 0], [0, 1, 0], [0, -1, 1]]

    def check(seed: int, n_atoms: int) -> None:
        crystal = random_crystal(seed, n_atoms)
        for matrix in (np.diag([2, 1, 1]), np.diag([2, 2, 2]), shear):
            check_cell_choice(model, crystal, matrix, TOLERANCE[dtype])

    run_property(slow, check, max_atoms=6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("forces", "coupled"), MODES)
def test_batched_prediction_equals_one_at_a_time(forces, coupled, dtype):
    crystals = [random_crystal(seed, n) for seed, n in ((1, 1), (2, 5), (3, 9))]
    check_batching(random_model(forces, coupled, dtype), crystals, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_weights_obey_rotation_translation_and_cell_choice(dtype):
    model = reference_model(dtype)
    rng = np.random.default_rng(3)
    for seed, n_atoms in ((4, 3), (5, 7)):
        crystal = random_crystal(seed, n_atoms, volume_per_atom=(12.0, 20.0), min_distance=1.6)
        check_rotation(model, crystal, random_orthogonal(rng, proper=False), TOLERANCE[dtype])
        check_translation(model, crystal, rng.normal(size=3), TOLERANCE[dtype])
        check_cell_choice(model, crystal, np.diag([2, 1, 1]), TOLERANCE[dtype])


# Numerical derivatives, float64. Five-point stencil, step 1e-4 Å (strain 1e-4): truncation
# h^4 f^(5) / 30 and rounding ~1e-16 |E| / h are both below 1e-9 of the force scale for the
# random models; the reference weights on dense random crystals are steep (forces up to
# ~100 eV/Å) and reach ~1e-6 of it. Tolerance 1e-5 relative: a wrong sign, a missing term or
# a factor would be off by O(1). The strain step is 1e-5: on a dense one-atom cell (seed 315,
# 23 GPa) the reference weights' truncation at strain 1e-4 reached 2e-5 relative (6.6e-4 GPa),
# at 1e-5 it is 2e-9; rounding there stays near 1e-10 (measured on the random models).
DERIVATIVE_STEP = 1e-4
STRAIN_STEP = 1e-5
DERIVATIVE_TOLERANCE = 1e-5


def conservative_models() -> list[FastCHGNet]:
    return [
        random_model("conservative", True, torch.float64),
        random_model("conservative", False, torch.float64),
        reference_model(torch.float64),
    ]


@pytest.mark.parametrize("slow", SIZES)
def test_conservative_forces_are_minus_the_numerical_energy_gradient(slow):
    models = conservative_models()

    def check(seed: int, n_atoms: int) -> None:
        crystal = random_crystal(seed, n_atoms, volume_per_atom=(12.0, 20.0), min_distance=1.6)
        for model in models:
            check_numerical_forces(model, crystal, DERIVATIVE_STEP, DERIVATIVE_TOLERANCE)

    run_property(slow, check, max_atoms=3, slow_max_atoms=8)


@pytest.mark.parametrize("slow", SIZES)
def test_conservative_stress_is_the_numerical_strain_derivative(slow):
    models = conservative_models()

    def check(seed: int, n_atoms: int) -> None:
        crystal = random_crystal(seed, n_atoms, volume_per_atom=(12.0, 20.0), min_distance=1.6)
        for model in models:
            check_numerical_stress(model, crystal, STRAIN_STEP, DERIVATIVE_TOLERANCE)

    run_property(slow, check, max_atoms=4, slow_max_atoms=12)


# Cutoff crossing, float64: distances cutoff + k * 1e-4 Å. A smooth quantity changes by about
# the same amount in each step (first order), so the step across the cutoff may be at most 3x
# the steps beside it, plus 1e-9 of the value's scale for rounding. An unenveloped term would
# jump by O(0.01-1) of the scale, far above the ~1e-5 steps of the smooth change.
@pytest.mark.parametrize("slow", SIZES)
@pytest.mark.parametrize("cutoff", [6.0, 3.0], ids=["atom-cutoff-6", "bond-cutoff-3"])
@pytest.mark.parametrize(("forces", "coupled"), MODES)
def test_energy_forces_stress_continuous_across_cutoffs(forces, coupled, cutoff, slow):
    model = random_model(forces, coupled, torch.float64)

    def check(seed: int, n_atoms: int) -> None:
        crystal = random_crystal(seed, max(n_atoms, 2))
        check_cutoff_continuity(model, crystal, cutoff, step=1e-4, tolerance=1e-9)

    run_property(slow, check)


@pytest.mark.parametrize("cutoff", [6.0, 3.0], ids=["atom-cutoff-6", "bond-cutoff-3"])
def test_reference_weights_continuous_across_cutoffs(cutoff):
    model = reference_model(torch.float64)
    for seed in (1, 2):
        crystal = random_crystal(seed, 6, volume_per_atom=(12.0, 20.0), min_distance=1.6)
        check_cutoff_continuity(model, crystal, cutoff, step=1e-4, tolerance=1e-9)
