"""ASE's integrators for our ensembles and thermostats: NVE (velocity Verlet), NVT (Nosé-Hoover
chain, Langevin, Berendsen, Bussi) and NPT (MTK Nosé-Hoover, Berendsen), with the constraints
they need.

Units at this interface: temperature K, timestep and coupling times fs, pressure GPa, bulk
modulus GPa, Langevin friction 1/fs. ASE's own units are applied here, once.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from ase import Atoms, units
from ase.constraints import FixAtoms, FixCartesian, FixCom, FixScaled
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import MTKNPT, NoseHooverChainNVT
from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen
from ase.md.nvtberendsen import NVTBerendsen
from ase.md.verlet import VelocityVerlet

from fastchgnet.md.settings import checked_integrator

Ensemble = Literal["nve", "nvt", "npt"]
#: the defaults of settings not given: pressure GPa (1 atm), bulk modulus GPa, friction 1/fs
DEFAULT_PRESSURE = 1.01325e-4
DEFAULT_BULK_MODULUS = 100.0
DEFAULT_FRICTION = 0.01


def make_integrator(
    atoms: Atoms,
    ensemble: Ensemble = "nvt",
    thermostat: str | None = None,
    *,
    temperature: float = 300.0,
    timestep: float = 2.0,
    taut: float | None = None,
    taup: float | None = None,
    pressure: float | None = None,
    bulk_modulus: float | None = None,
    friction: float | None = None,
    seed: int | np.random.SeedSequence | None = None,
) -> MolecularDynamics:
    """An ASE integrator for ``atoms`` (which must already carry a calculator). Langevin adds
    a ``FixCom`` constraint to ``atoms`` unless atoms are fixed (``add_integrator_constraints``).

    Args:
        ensemble: "nve", "nvt" or "npt".
        thermostat: see ``THERMOSTATS``; None (default): nose-hoover for nvt and npt, "none"
            for nve (which takes no other).
        temperature: target temperature, K.
        timestep: fs.
        taut: thermostat time constant, fs (default 100 timesteps; Langevin: 1 / friction).
        taup: barostat time constant, fs (default 1000 timesteps).
        pressure: external pressure of NPT, GPa (default 1 atm).
        bulk_modulus: estimate for the Berendsen NPT barostat, GPa (default 100).
        friction: Langevin friction, 1/fs (default 1 / taut where taut is given, else 0.01);
            not with taut.
        seed: random seed of stochastic thermostats.

    A setting given (not None) that the chosen integrator does not use is a ValueError
    (``checked_integrator``), as are taut and friction together.
    """
    ensemble, thermostat = checked_integrator(
        ensemble, thermostat, temperature, timestep, taut=taut, taup=taup, pressure=pressure,
        bulk_modulus=bulk_modulus, friction=friction,
    )  # fmt: skip
    add_integrator_constraints(atoms, ensemble, thermostat)
    dt = timestep * units.fs
    tdamp = (taut if taut is not None else 100 * timestep) * units.fs
    pdamp = (taup if taup is not None else 1000 * timestep) * units.fs
    pressure = DEFAULT_PRESSURE if pressure is None else pressure
    bulk_modulus = DEFAULT_BULK_MODULUS if bulk_modulus is None else bulk_modulus
    if friction is None:
        friction = DEFAULT_FRICTION if taut is None else 1.0 / taut
    rng = np.random.default_rng(seed)
    kind = (ensemble, thermostat)
    if kind == ("nve", "none"):
        return VelocityVerlet(atoms, timestep=dt)
    if kind == ("nvt", "nose-hoover"):
        return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=temperature, tdamp=tdamp)
    if kind == ("nvt", "langevin"):
        return Langevin(
            atoms, dt, temperature_K=temperature, friction=friction / units.fs, fixcm=False, rng=rng
        )
    if kind == ("nvt", "berendsen"):
        return NVTBerendsen(atoms, dt, temperature_K=temperature, taut=tdamp)
    if kind == ("nvt", "bussi"):
        return Bussi(atoms, dt, temperature_K=temperature, taut=tdamp, rng=rng)
    if kind == ("npt", "nose-hoover"):
        return MTKNPT(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            pressure_au=pressure * units.GPa,
            tdamp=tdamp,
            pdamp=pdamp,
        )
    return Inhomogeneous_NPTBerendsen(
        atoms,
        dt,
        temperature_K=temperature,
        pressure_au=pressure * units.GPa,
        taut=tdamp,
        taup=pdamp,
        compressibility_au=1.0 / (bulk_modulus * units.GPa),
    )


def add_integrator_constraints(atoms: Atoms, ensemble: str, thermostat: str | None) -> None:
    """Add to ``atoms`` the constraints ``make_integrator``'s integrator needs, once however
    often called: Langevin's ``FixCom`` (ASE's advice, not its ``fixcm=True``), unless
    ``fixes_atoms``: FixCom shifts every atom, fixed ones too, and fixed atoms hold the
    frame anyway."""
    langevin = (ensemble.lower(), (thermostat or "").lower()) == ("nvt", "langevin")
    if fixes_atoms(atoms) or not langevin:
        return
    if not any(isinstance(c, FixCom) for c in atoms.constraints):
        atoms.set_constraint([*atoms.constraints, FixCom()])


#: ASE's constraints that fix atoms, or some of their coordinates (selective dynamics)
FIXING = (FixAtoms, FixCartesian, FixScaled)


def fixes_atoms(atoms: Atoms) -> bool:
    """Whether a constraint of ``atoms`` fixes atoms or some of their coordinates (``FIXING``:
    VASP's selective dynamics reads as these): such atoms must keep their positions and zero
    momenta, which a centre-of-mass correction (``FixCom``, ``Stationary``) would break."""
    return any(isinstance(c, FIXING) for c in atoms.constraints)
