"""The settings of an MD run, checked before anything runs: ensembles and their thermostats,
and the integrator's numbers (``checked_integrator``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

#: thermostats (and barostats) of each ensemble; "none" for NVE
THERMOSTATS: dict[str, tuple[str, ...]] = {
    "nve": ("none",),
    "nvt": ("nose-hoover", "langevin", "berendsen", "bussi"),
    "npt": ("nose-hoover", "berendsen"),
}

#: ``make_integrator``'s further settings and the values each may take
POSITIVE = ("taut", "taup", "bulk_modulus")  # fs, fs, GPa (None: the default)
NON_NEGATIVE = ("friction",)  # 1/fs
ANY_FINITE = ("pressure",)  # GPa
#: the settings each (ensemble, thermostat) uses; one given to another is refused
USES: dict[tuple[str, str], tuple[str, ...]] = {
    ("nve", "none"): (),
    ("nvt", "nose-hoover"): ("taut",),
    ("nvt", "langevin"): ("taut", "friction"),  # friction = 1 / taut; give one
    ("nvt", "berendsen"): ("taut",),
    ("nvt", "bussi"): ("taut",),
    ("npt", "nose-hoover"): ("taut", "taup", "pressure"),
    ("npt", "berendsen"): ("taut", "taup", "pressure", "bulk_modulus"),
}


#: Thermostats that divide by the temperature or the kinetic energy: ASE's Nosé-Hoover
#: (mass kT tau^2), Berendsen (target over current temperature) and Bussi (zero kinetic
#: energy refused) fail at 0 K; Langevin quenches.
NEED_WARMTH = ("nose-hoover", "berendsen", "bussi")


def checked_integrator(
    ensemble: str, thermostat: str | None, temperature: float, timestep: float, **integrator: Any
) -> tuple[str, str]:
    """(ensemble, thermostat) in lower case (thermostat None: nose-hoover for nvt and npt,
    "none" for nve), or ValueError in one line: an unknown ensemble, a thermostat that does
    not do it (nve takes "none" only), a timestep (fs) that is not > 0, a
    temperature (K) that is not >= 0 (> 0 for the ``NEED_WARMTH`` thermostats), a taut or
    taup (fs) or bulk modulus (GPa) that is not > 0, a friction (1/fs) that is not >= 0, a
    pressure (GPa) that is not finite, a setting ``make_integrator`` does not take, one given
    (not None) that this ensemble and thermostat do not use (``USES``), or Langevin's taut
    and friction both given."""
    ensemble = ensemble.lower()
    if ensemble not in THERMOSTATS:
        raise ValueError(f"ensemble {ensemble!r}: use one of {', '.join(THERMOSTATS)}")
    thermostat = (thermostat or THERMOSTATS[ensemble][0]).lower()
    if ensemble == "nve" and thermostat != "none":
        raise ValueError(f"thermostat {thermostat!r}: nve runs without a thermostat; leave it out")
    if thermostat not in THERMOSTATS[ensemble]:
        raise ValueError(
            f"thermostat {thermostat!r} for {ensemble}: use one of "
            f"{', '.join(THERMOSTATS[ensemble])}"
        )
    check_numbers(temperature, timestep)
    if temperature == 0 and thermostat in NEED_WARMTH:
        raise ValueError(
            f"thermostat {thermostat} needs temperature > 0 K (at 0 K it divides by the "
            "kinetic energy); quench with langevin, or relax the structure"
        )
    unknown = sorted(set(integrator) - {*POSITIVE, *NON_NEGATIVE, *ANY_FINITE})
    if unknown:
        raise ValueError(f"unknown MD setting(s) {unknown}")
    unused = [name for name, value in integrator.items()
              if value is not None and name not in USES[ensemble, thermostat]]  # fmt: skip
    if unused:
        used = ", ".join(USES[ensemble, thermostat]) or "none"
        raise ValueError(
            f"{', '.join(unused)} (--{' --'.join(n.replace('_', '-') for n in unused)}): not "
            f"used by {ensemble} with thermostat {thermostat} (it uses: {used}); leave it out"
        )
    if integrator.get("taut") is not None and integrator.get("friction") is not None:
        raise ValueError(
            "taut and friction (--taut, --friction): Langevin's friction is 1/taut; give one"
        )
    check_numbers(temperature, timestep, **integrator)
    return ensemble, thermostat


def check_numbers(temperature: float, timestep: float, **integrator: float | None) -> None:
    """ValueError in one line for numbers no MD can run with: a timestep (fs) not > 0, a
    temperature (K) not >= 0, a taut or taup (fs) or bulk modulus (GPa) not > 0, a friction
    (1/fs) not >= 0, a pressure (GPa) not finite (a setting given as None is the default)."""
    if not (timestep > 0 and math.isfinite(timestep)):
        raise ValueError(f"need a finite timestep > 0 fs, got {timestep}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"need a finite temperature >= 0 K, got {temperature}")
    for name, value in integrator.items():
        if value is None:
            continue
        if name == "pressure":
            check_pressure(value)
        elif not math.isfinite(value):
            raise ValueError(f"need a finite {name}, got {value}")
        if (name in POSITIVE and value <= 0) or (name in NON_NEGATIVE and value < 0):
            raise ValueError(f"need {name} {'>' if name in POSITIVE else '>='} 0, got {value}")


def check_pressure(pressure: Any, *, voigt: bool = False) -> None:
    """ValueError in one line for a pressure (GPa) that is not a finite number or, with
    ``voigt``, a finite 6-vector of stresses (xx, yy, zz, yz, xz, xy: ASE NPT's
    ``externalstress``) or a symmetric 3x3 stress (``voigt_pressure`` turns it into the
    6-vector)."""
    try:
        values = np.asarray(pressure, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"need a pressure in GPa, got {pressure!r}") from None
    if values.shape not in (((), (6,), (3, 3)) if voigt else ((),)):
        form = (
            "a number, a 6-vector (xx, yy, zz, yz, xz, xy) or a symmetric 3x3"
            if voigt
            else "a number"
        )
        raise ValueError(f"need pressure as {form} in GPa, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"need a finite pressure, got {pressure}")
    if values.shape == (3, 3) and not np.allclose(values, values.T, rtol=1e-6, atol=1e-12):
        worst = float(np.abs(values - values.T).max())
        raise ValueError(
            f"need a symmetric 3x3 pressure (a stress tensor), got off-diagonal pairs that "
            f"differ by up to {worst:g} GPa"
        )


def voigt_pressure(pressure: Any) -> float | np.ndarray:
    """A pressure ``check_pressure(voigt=True)`` accepted (GPa) as ASE NPT's
    ``externalstress`` takes it: a number as a float, a 6-vector as it is, a symmetric 3x3 as
    its 6-vector (xx, yy, zz, yz, xz, xy). ASE 3.29's NPT fails on a 3x3 itself (it calls a
    ``_issymmetric`` it no longer has)."""
    if np.ndim(pressure) == 0:
        return float(pressure)
    values = np.asarray(pressure, float)
    if values.shape == (3, 3):
        return full_3x3_to_voigt_6_stress(values)
    return values


def check_thermostat_start(dyn: Any, atoms: Any) -> None:
    """Raise ValueError (one line) where a Berendsen thermostat (NVT or NPT) with a target of
    0 K would start from atoms at rest: ASE scales the velocities by the square root of target
    over current temperature, 0 / 0, and every position becomes NaN after the first step (the
    reference's MD gives NaN positions unsaid). From rest towards a target above 0 K, ASE's
    clipped scaling is harmless."""
    from ase.md.nvtberendsen import NVTBerendsen

    at_rest = not atoms.get_momenta().any()
    if isinstance(dyn, NVTBerendsen) and dyn.temperature == 0 and at_rest:
        raise ValueError(
            "a Berendsen thermostat at 0 K cannot start from atoms at rest (ASE divides 0 K by "
            "0 K): give a starting temperature above 0 K, or relax the structure instead"
        )
