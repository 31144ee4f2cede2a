"""Unit constants. Conversions happen once, at ingest (see DESIGN.md "Conventions").

Internal units: energy eV (per atom in labels and predictions), length Å, forces eV/Å,
stress GPa with CHGNet's sign, magnetic moments |μB| per atom.
"""

from __future__ import annotations

#: 1 eV/Å^3 in GPa (CHGNet's constant; e * 1e30 / 1e9).
EV_PER_A3_TO_GPA = 160.21766208

#: VASP / MPtrj stress in kBar to our GPa with CHGNet's sign (VASP reports -stress).
KBAR_TO_GPA = -0.1

#: Largest atomic number CHGNet's atom embedding covers (H..Pu).
MAX_ATOMIC_NUMBER = 94
