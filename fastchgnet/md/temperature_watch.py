"""The temperature watch of an MD run: a run that heats far beyond its temperature says so
once, and one past any temperature a structure survives stops as diverged.

A too large timestep, or a model not trained for the elements, pumps energy into the atoms:
the temperature climbs to 1e4-1e8 K while the run goes on (NVE of Si8 at 30 fs with the
reference weights: 300, 217, 921, 1.2e4, 1.3e5, 6e6 K at steps 0 to 5, 9e7 K at 14). It reads
``atoms.get_temperature()`` (K, the count the MD log uses: numpy on the host, no model call)
at the steps the run writes (``md.frames.written_step``), not at every step.

Bounds, relative to a reference temperature: the thermostat's target, or the start's where
that is hotter (a quench from 3000 K to 300 K starts hot on purpose); NVE has no target, so
its start. The warning: above ``WARN_FACTOR`` x the reference and ``WARN_MARGIN_K`` above it
(a 0 K target warns above 1000 K), and above what a thermostat's own swings reach once in
``NOISE_ODDS`` checks for the cell's degrees of freedom (the kinetic temperature of n of them
is the reference times a chi-squared of n over n: 5x comes once in 500 checks for 2 atoms, 3
degrees of freedom, where the bound is 10.2x, and once in 1e12 for 8 atoms). The stop: above
``STOP_FACTOR`` x the reference and ``STOP_FLOOR_K`` (1e5 K is 13 eV of kinetic energy per
atom: no bond holds, and no potential was trained there), or not finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ase import Atoms, units
from ase.md.md import MolecularDynamics

from fastchgnet.md.frames import written_step

WARN_FACTOR = 5.0
WARN_MARGIN_K = 1000.0
#: how rarely a thermostatted run's own temperature swings may pass the warning bound
NOISE_ODDS = 1e-6
STOP_FACTOR = 10.0
STOP_FLOOR_K = 1e5
#: what a run that heats beyond its bounds most likely suffers from (NVE: no thermostat)
CAUSES = "timestep {timestep:g} fs too large? a model not trained for these elements?"
THERMOSTAT_CAUSE = " thermostat settings?"


class TemperatureRunaway(Exception):
    """A watched step's temperature passed the stop bound: ``step`` (0 the start), and the
    problem in words (the message)."""

    def __init__(self, step: int, problem: str) -> None:
        super().__init__(problem)
        self.step = step


def warn_bound(reference: float, degrees_of_freedom: int = 0) -> float:
    """The temperature (K) above which a run of ``reference`` K with ``degrees_of_freedom``
    (0: many) is warned about: ``WARN_FACTOR`` x and ``WARN_MARGIN_K`` above ``reference``,
    and past its swings at equilibrium once in ``NOISE_ODDS``."""
    factor = WARN_FACTOR
    if degrees_of_freedom > 0:
        from scipy.stats import chi2

        factor = max(factor, chi2.isf(NOISE_ODDS, degrees_of_freedom) / degrees_of_freedom)
    return max(factor * reference, reference + WARN_MARGIN_K)


def stop_bound(reference: float, max_temperature: float | None = None) -> float:
    """The temperature (K) above which a run of ``reference`` K stops as diverged:
    ``max_temperature`` where given, else ``STOP_FACTOR`` x ``reference``, at least
    ``STOP_FLOOR_K``."""
    if max_temperature is not None:
        return max_temperature
    return max(STOP_FACTOR * reference, STOP_FLOOR_K)


def check_max_temperature(max_temperature: float | None) -> None:
    """ValueError in one line unless ``max_temperature`` (K) is None or > 0 (inf: no stop)."""
    if max_temperature is not None and not max_temperature > 0:
        raise ValueError(f"need max_temperature > 0 K (or None), got {max_temperature}")


@dataclass
class TemperatureWatch:
    """Watches a run's temperature (``__call__`` at each written step): says one warning
    line (``say``) the first time it passes ``warn_bound``, raises ``TemperatureRunaway``
    past ``stop_above`` (K), and keeps the ``hottest`` temperature seen (K).

    reference: K (see the module) | what: "the target" or "the start's" | causes: the
    likely causes, in words | stop_above: K (inf: never) | warn_above: K (``warn_bound``)."""

    reference: float
    what: str
    causes: str
    stop_above: float
    say: Callable[[str], None]
    warn_above: float
    hottest: float = 0.0
    warned: bool = False

    def __call__(self, temperature: float, step: int) -> None:
        """Check ``temperature`` (K) of step ``step``."""
        if not math.isfinite(temperature):  # NaN momenta: past any bound
            raise TemperatureRunaway(step, f"temperature {temperature} K, not finite")
        self.hottest = max(self.hottest, temperature)
        if temperature > self.stop_above:
            raise TemperatureRunaway(
                step,
                f"temperature {temperature:.0f} K is past {self.stop_above:.0f} K, "
                f"{self.compared(temperature)}",
            )
        if not self.warned and temperature > self.warn_above:
            self.warned = True
            stop = (
                f"; it stops above {self.stop_above:.0f} K"
                if math.isfinite(self.stop_above)
                else ""
            )
            self.say(
                f"md: temperature {temperature:.0f} K at step {step} is "
                f"{self.compared(temperature)}: the run is unstable ({self.causes}){stop}"
            )

    def compared(self, temperature: float) -> str:
        """``temperature`` (K) against the reference, in words: "160x the target 300 K"."""
        if self.reference > 0:
            return f"{temperature / self.reference:.0f}x {self.what} {self.reference:.0f} K"
        return f"far above {self.what} 0 K"


def watch_for(
    ensemble: str,
    target: float,
    start: float,
    timestep: float,
    say: Callable[[str], None],
    max_temperature: float | None = None,
    degrees_of_freedom: int = 0,
) -> TemperatureWatch:
    """The watch of a run in ``ensemble`` with a thermostat target of ``target`` K (not used
    by "nve"), starting at ``start`` K, with ``timestep`` fs; ``max_temperature``: see
    ``stop_bound``; ``say``: prints the warning line; ``degrees_of_freedom``: the cell's
    (``warn_bound``; 0: many)."""
    if ensemble == "nve" or start > 1.01 * target:  # not 300.00000000000006 K
        reference, what = start, "the start's"
    else:
        reference, what = target, "the target"
    causes = CAUSES.format(timestep=timestep) + ("" if ensemble == "nve" else THERMOSTAT_CAUSE)
    stop = stop_bound(reference, max_temperature)
    warn = warn_bound(reference, degrees_of_freedom)
    return TemperatureWatch(reference, what, causes, stop, say, warn, hottest=float(start))


def kinetic_temperature(atoms: Atoms) -> float:
    """``atoms.get_temperature()`` (K, the MD log's count of degrees of freedom), 0 K where
    the constraints leave none (one atom under ``FixCom``, every atom fixed)."""
    if atoms.get_number_of_degrees_of_freedom() > 0:
        return float(atoms.get_temperature())
    return 0.0


def watch_run(
    dyn: MolecularDynamics,
    ensemble: str,
    target: float,
    steps: int,
    loginterval: int,
    max_temperature: float | None,
    say: Callable[[str], None],
) -> TemperatureWatch:
    """Attach to ``dyn`` (its atoms at their starting momenta) the ``watch_for`` of its run
    of ``steps`` steps in ``ensemble`` (``target``, ``max_temperature``: K), called at the
    steps written every ``loginterval`` (``written_step``), and return it: its ``hottest``
    is the run's hottest temperature seen, K."""
    atoms = dyn.atoms
    timestep = dyn.dt / units.fs
    start, dof = kinetic_temperature(atoms), atoms.get_number_of_degrees_of_freedom()
    watch = watch_for(ensemble, target, start, timestep, say, max_temperature, dof)

    def check() -> None:
        if written_step(dyn.nsteps, steps, loginterval):
            watch(kinetic_temperature(atoms), dyn.nsteps)

    dyn.attach(check, interval=1)
    return watch
