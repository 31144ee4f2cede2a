"""``fastchgnet md`` from stored momenta names the starting temperature as its log counts it:
Langevin fixes the centre of mass, so its log counts 3N - 3 degrees of freedom, and the
message counted 3N (144.4 K said, 165.1 K logged, for the same frame of 8 atoms)."""

from __future__ import annotations

import re

import numpy as np
from ase.build import bulk
from ase.io import write
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from fastchgnet.cli.commands import main


def test_the_start_message_and_the_log_count_the_same_degrees_of_freedom(tmp_path, capsys):
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=450, rng=np.random.default_rng(0))
    write(tmp_path / "run.extxyz", atoms)
    log = tmp_path / "md.log"
    command = ["md", f"{tmp_path / 'run.extxyz'}@-1", "--steps", "1", "--compile", "off",
               "--thermostat", "langevin", "-o", str(tmp_path / "md.extxyz"),
               "--log", str(log)]  # fmt: skip
    assert main(command) == 0
    said = float(re.search(r"momenta stored in .*: ([0-9.]+) K", capsys.readouterr().err)[1])
    logged = float(log.read_text().splitlines()[1].split()[-1])  # time 0: the start
    assert said == logged
    assert said != round(atoms.get_temperature(), 1)  # 3N would have said otherwise
