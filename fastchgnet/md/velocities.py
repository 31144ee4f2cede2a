"""The starting velocities of an MD run: Maxwell-Boltzmann, without drift, at exactly the
temperature asked for (as ASE reads it), reproducible from a seed."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.md.velocitydistribution import Stationary, force_temperature, thermalize_momenta

from fastchgnet.md.integrators import fixes_atoms


def start_momenta(
    atoms: Atoms, temperature: float, seed: int | np.random.SeedSequence | None = None
) -> None:
    """Set the momenta of ``atoms`` for a run that starts at ``temperature`` K.

    Each atom's momentum (3,) is drawn from the Maxwell-Boltzmann distribution at
    ``temperature`` (a numpy generator seeded with ``seed``: the same seed gives the same
    momenta), the centre-of-mass motion is removed (more than one atom, none fixed: fixed
    atoms keep zero momenta and hold the frame, ``fixes_atoms``), and all momenta are
    scaled by one factor so that ``atoms.get_temperature()`` is exactly ``temperature``: the
    kinetic energy is ndof kB T / 2, ndof counted as ASE counts it, 3 per atom less what the
    constraints remove (``FixAtoms``' fixed atoms, ``FixCom``'s 3). The reference (chgnet's
    MolecularDynamics) does the same with ASE's ``force_temp=True``. A drawn kinetic energy of
    zero (one atom under ``FixCom``, every atom fixed) stays zero.
    """
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    # one atom: removing the drift would leave no temperature to keep
    if len(atoms) > 1 and not fixes_atoms(atoms):
        Stationary(atoms, preserve_temperature=False)  # rescaled below, with ASE's count
    if atoms.get_number_of_degrees_of_freedom() > 0 and atoms.get_kinetic_energy() > 0:
        force_temperature(atoms, temperature)
