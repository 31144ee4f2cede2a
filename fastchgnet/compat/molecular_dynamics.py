"""``MolecularDynamics`` with the reference's signature: the same ASE integrators, driven by
our calculator (Verlet-skin neighbour reuse, one model call per step). Its first ``run(steps)``
compiles the model where that pays over the run, as ``fastchgnet.md.run_md`` decides.

Units: temperature K, timestep and ``taut``/``taup`` fs, bulk modulus GPa, pressure GPa (a number,
or for Nosé-Hoover a Voigt 6-vector xx, yy, zz, yz, xz, xy, as ASE NPT's ``externalstress``,
or a symmetric 3x3 stress, which the reference passes to ASE 3.29's NPT where it fails).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator
from ase.md.npt import NPT
from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen, NPTBerendsen, NVTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from pymatgen.analysis.eos import EOSError
from pymatgen.core.units import FloatWithUnit

from fastchgnet.compat.dynamics import CHGNetCalculator
from fastchgnet.compat.eos import EquationOfState
from fastchgnet.compat.model import unsupported
from fastchgnet.md.calculator import as_atoms, capture_backend, compiled_potential
from fastchgnet.md.dynamics import choose_compiled, md_compile_options
from fastchgnet.md.settings import (
    check_numbers,
    check_pressure,
    check_thermostat_start,
    voigt_pressure,
)
from fastchgnet.model.potential import EagerPotential


class CrystalFeasObserver:
    """Records the calculator's ``crystal_fea`` (A,) at each call; ``save`` pickles them."""

    def __init__(self, atoms: Atoms) -> None:
        self.atoms = atoms
        self.crystal_feature_vectors: list[np.ndarray] = []

    def __call__(self) -> None:
        self.crystal_feature_vectors.append(self.atoms.calc.results["crystal_fea"])

    def __len__(self) -> int:
        return len(self.crystal_feature_vectors)

    def save(self, filename: str) -> None:
        with open(filename, "wb") as handle:
            pickle.dump({"crystal_feas": self.crystal_feature_vectors}, handle)


def upper_triangular_cell(atoms: Atoms) -> bool:
    """Rotate ``atoms`` to an upper-triangular cell (ASE's NPT needs one), atoms scaled;
    whether it had to."""
    if NPT._isuppertriangular(atoms.get_cell()):
        return False
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    sin_a, sin_b, _ = np.sin(np.radians((alpha, beta, gamma)))
    cos_a, cos_b, cos_g = np.cos(np.radians((alpha, beta, gamma)))
    cos_p = np.clip((cos_g - cos_a * cos_b) / (sin_a * sin_b), -1, 1)
    sin_p = (1 - cos_p**2) ** 0.5
    basis = [
        (a * sin_b * sin_p, a * sin_b * cos_p, a * cos_b),
        (0, b * sin_a, b * cos_a),
        (0, 0, c),
    ]
    atoms.set_cell(basis, scale_atoms=True)
    return True


#: chgnet's GPa per eV/Å^3 for a bulk modulus given in GPa (ASE's is 160.21766...)
GPA_PER_EV_A3 = 160.2176


def fit_bulk_modulus(atoms: Atoms) -> tuple[FloatWithUnit, float]:
    """The bulk modulus of ``atoms`` by ``EquationOfState`` with its calculator's model, as
    chgnet's MolecularDynamics fits it: pymatgen's ``FloatWithUnit`` in GPa and a float in
    eV/Å^3, printed as chgnet prints them; 2 GPa, with a warning, where the fit fails (as
    chgnet; its attribute is then None, ours the 2 GPa run with)."""
    calc = atoms.calc
    if not isinstance(calc, CHGNetCalculator):
        raise unsupported(
            "NPT without bulk_modulus with a calculator other than CHGNetCalculator",
            "pass bulk_modulus in GPa",
        )
    eos = EquationOfState(model=calc, use_device=calc.device)
    try:
        eos.fit(atoms, steps=500, fmax=0.1, verbose=False)
    except EOSError as exc:
        warnings.warn(
            f"equation of state fit failed ({exc}): bulk modulus set to 2 GPa; NPT runs with "
            "a wrong pressure relaxation time, pass bulk_modulus",
            stacklevel=3,
        )
        return FloatWithUnit(2.0, "GPa"), 2 / GPA_PER_EV_A3
    bulk_modulus, bulk_modulus_au = eos.get_bulk_modulus("GPa"), eos.get_bulk_modulus()
    print(
        f"Completed bulk modulus calculation: k = {bulk_modulus:.3}GPa, {bulk_modulus_au:.3}eV/A^3"
    )
    return bulk_modulus, bulk_modulus_au


def check_settings(ensemble: str, thermostat: str, temperature: float, timestep: float,
                   **settings: Any) -> None:  # fmt: skip
    """ValueError in one line for numbers no MD runs with (``md.settings.check_numbers``): a
    temperature (K) not >= 0 (the reference ran into NaN), a timestep (fs) not > 0 (a
    ZeroDivisionError), a taut or taup (fs) or bulk modulus (GPa) not > 0, a pressure (GPa)
    not finite, or not a number, 6-vector (Voigt: ASE NPT's ``externalstress``) or symmetric
    3x3 (NPT Berendsen takes a number only, as the reference's). The combinations the
    reference takes stay its own (its NPT Nosé-Hoover takes ``bulk_modulus``, its Berendsen
    runs a quench at 0 K); an ensemble or thermostat name it does not know is left to
    ``MolecularDynamics``' own message."""
    if ensemble.lower() not in ("nve", "nvt", "npt"):
        return
    named = ("taut", "taup", "bulk_modulus")
    check_numbers(temperature, timestep, **{name: settings.get(name) for name in named})
    berendsen_npt = ensemble.lower() == "npt" and thermostat.lower() != "nose-hoover"
    check_pressure(settings.get("pressure"), voigt=not berendsen_npt)


class MolecularDynamics:
    """NVE (velocity Verlet), NVT (Nosé-Hoover, Berendsen) or NPT (Nosé-Hoover/Parrinello-
    Rahman, Berendsen, inhomogeneous Berendsen) with the reference's arguments; ``run(steps)``.

    One argument more than the reference: ``compiled``. None (default): the first ``run``
    compiles the model when that pays over its steps and keeps it only where the compiled
    calls measure faster (``fastchgnet.md.dynamics.choose_compiled``; the decision and its
    reason are printed), with the MD's own calculator. True (or "inductor", "torchscript":
    that capture) compiles at the first ``run``, False never does. Compiled or not, the
    calculator's results hold ``crystal_fea`` at every step, as the reference's (the compiled
    programs compute the features too).

    NPT without ``bulk_modulus`` (GPa) fits one by ``EquationOfState`` first (a few seconds
    of relaxations; printed), as the reference; the attribute ``bulk_modulus`` is then, as
    the reference's, pymatgen's ``FloatWithUnit`` in GPa (a given one is kept as given).
    """

    def __init__(
        self,
        atoms: Any,
        *,
        model: Any = None,
        ensemble: str = "nvt",
        thermostat: str = "Berendsen_inhomogeneous",
        temperature: float = 300,
        starting_temperature: float | None = None,
        timestep: float = 2.0,
        pressure: float | Any = 1.01325e-4,
        taut: float | None = None,
        taup: float | None = None,
        bulk_modulus: float | None = None,
        trajectory: Any = None,
        logfile: str | None = None,
        loginterval: int = 1,
        crystal_feas_logfile: str | None = None,
        append_trajectory: bool = False,
        on_isolated_atoms: str = "warn",
        return_site_energies: bool = False,
        use_device: str | None = None,
        compiled: bool | str | None = None,
    ) -> None:
        capture_backend(compiled)  # a bad name fails here, in one line
        check_settings(ensemble, thermostat, temperature, timestep, taut=taut, taup=taup,
                       pressure=pressure, bulk_modulus=bulk_modulus)  # fmt: skip
        pressure = voigt_pressure(pressure)
        if starting_temperature is not None and not starting_temperature >= 0:
            raise ValueError(f"need starting_temperature >= 0 K, got {starting_temperature}")
        if compiled and isinstance(model, BaseCalculator):
            raise ValueError(
                "compiled=True needs the MD's own calculator (model: a CHGNet or None)"
            )
        self.ensemble, self.thermostat = ensemble, thermostat
        self.compiled, self._compile_chosen = compiled, False
        self._own_calculator = not isinstance(model, BaseCalculator)
        atoms = atoms if isinstance(atoms, Atoms) else as_atoms(atoms)
        if starting_temperature is not None:
            thermalize_momenta(atoms, temperature_K=starting_temperature, exact_temperature=True)
            Stationary(atoms)
        self.atoms = atoms
        if isinstance(model, BaseCalculator):
            atoms.calc = model
        else:
            atoms.calc = CHGNetCalculator(
                model,
                use_device=use_device,
                on_isolated_atoms=on_isolated_atoms,
                return_site_energies=return_site_energies,
            )
        taut = 100 * timestep if taut is None else taut
        taup = 1000 * timestep if taup is None else taup
        io = {"trajectory": trajectory, "logfile": logfile, "loginterval": loginterval}
        append = {"append_trajectory": append_trajectory}
        dt, kind = timestep * units.fs, (ensemble.lower(), thermostat.lower())
        if kind[0] == "nve":
            self.dyn = VelocityVerlet(atoms, timestep=dt, **io, **append)
        elif kind == ("nvt", "nose-hoover"):
            upper_triangular_cell(atoms)
            self.dyn = NPT(
                atoms, timestep=dt, temperature_K=temperature,
                externalstress=pressure * units.GPa, ttime=taut * units.fs, pfactor=None,
                **io, **append,
            )  # fmt: skip
        elif kind[0] == "nvt" and kind[1].startswith("berendsen"):
            self.dyn = NVTBerendsen(
                atoms, timestep=dt, temperature_K=temperature, taut=taut * units.fs, **io, **append
            )
        elif kind[0] == "npt":
            if bulk_modulus is None:  # chgnet's attribute: the FloatWithUnit in GPa
                bulk_modulus, bulk_modulus_au = fit_bulk_modulus(atoms)
            else:  # given in GPa, kept as given (chgnet's attribute too)
                bulk_modulus_au = bulk_modulus / GPA_PER_EV_A3
            moduli = float(bulk_modulus), float(bulk_modulus_au)  # ASE's arithmetic: no units
            self.dyn = self._npt(atoms, kind[1], dt, temperature, pressure, taut, taup,
                                 *moduli, io, append)  # fmt: skip
        else:
            raise ValueError(
                f"ensemble={ensemble!r} with thermostat={thermostat!r} is not supported: use nve, "
                "nvt with 'Nose-Hoover' or 'Berendsen', npt with 'Nose-Hoover', "
                "'Berendsen_inhomogeneous' or 'NPT_Berendsen' (fastchgnet.md.run_md offers more)"
            )
        self.bulk_modulus = bulk_modulus
        self.trajectory, self.logfile, self.loginterval = trajectory, logfile, loginterval
        self.timestep, self.crystal_feas_logfile = timestep, crystal_feas_logfile

    def _npt(self, atoms: Atoms, thermostat: str, dt: float, temperature: float,
             pressure: float, taut: float, taup: float, bulk_modulus: float,
             bulk_modulus_au: float, io: dict, append: dict) -> Any:  # fmt: skip
        """The NPT integrator; ``bulk_modulus`` GPa, ``bulk_modulus_au`` eV/Å^3 (plain
        floats: ASE's arithmetic takes no units)."""
        compressibility = 1 / bulk_modulus_au  # Å^3/eV, as chgnet's
        common = {"timestep": dt, "temperature_K": temperature}
        if thermostat == "nose-hoover":
            upper_triangular_cell(atoms)
            pfactor = bulk_modulus * units.GPa * (taup * units.fs) ** 2
            return NPT(atoms, **common, externalstress=pressure * units.GPa,
                       ttime=taut * units.fs, pfactor=pfactor, **io, **append)  # fmt: skip
        berendsen = {
            "pressure_au": pressure * units.GPa,
            "taut": taut * units.fs,
            "taup": taup * units.fs,
            "compressibility_au": compressibility,
        }
        if thermostat == "berendsen_inhomogeneous":
            return Inhomogeneous_NPTBerendsen(atoms, **common, **berendsen, **io)
        if thermostat == "npt_berendsen":
            return NPTBerendsen(atoms, **common, **berendsen, **io, **append)
        raise ValueError(
            f"npt thermostat {thermostat!r}: use 'Nose-Hoover', 'Berendsen_inhomogeneous' or "
            "'NPT_Berendsen'"
        )

    def run(self, steps: int) -> None:
        """Run ``steps`` MD steps (frames and log lines every ``loginterval``)."""
        check_thermostat_start(self.dyn, self.atoms)
        if not self._compile_chosen:
            self._compile_chosen = True
            check = self._compile(steps)
            if check is not None:
                self.dyn.attach(check, interval=1)
        observer = None
        if self.crystal_feas_logfile:
            observer = CrystalFeasObserver(self.atoms)
            self.dyn.attach(observer, interval=self.loginterval)
        self.dyn.run(steps)
        if observer is not None:
            observer.save(self.crystal_feas_logfile)

    def _compile(self, steps: int) -> Callable[[], None] | None:
        """Compile the MD's own calculator's model for a run of ``steps`` as ``compiled`` asks
        (see the class docstring); the observer that keeps it only where it is faster, or
        None."""
        calc = self.atoms.calc
        eager = getattr(calc, "potential", None)
        if self.compiled is False or not self._own_calculator:
            return None
        if not isinstance(eager, EagerPotential):
            return None
        if self.compiled:
            options = md_compile_options(steps) | {"backend": capture_backend(self.compiled)}
            calc.potential = compiled_potential(eager.model, **options)
            return None
        # the decision times eager calls: make the first (cold) one here, untimed, as run_md does
        self.atoms.get_forces()
        # the calculator computes stress on every call, as the reference's does
        check = choose_compiled(self.atoms, eager.model, steps, stress=True, progress=True)
        # choose_compiled leaves features out; the compiled programs give them too, and chgnet's
        # results always hold crystal_fea (an observer reads it at every step)
        calc.features = True
        return check

    def upper_triangular_cell(self, *, verbose: bool | None = False) -> None:
        """Rotate the MD's atoms to an upper-triangular cell (ASE's Nosé-Hoover NPT needs
        one), as chgnet's method; ``verbose`` says so when it did."""
        if upper_triangular_cell(self.atoms) and verbose:
            print("Transformed to upper triangular unit cell.", flush=True)

    def set_atoms(self, atoms: Atoms) -> None:
        """Continue the run with ``atoms`` (the calculator carries over)."""
        calculator = self.atoms.calc
        self.atoms = atoms
        self.dyn.atoms = atoms
        self.dyn.atoms.calc = calculator
