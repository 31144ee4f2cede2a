"""An MD run that heats to an absurd temperature says so: one warning line (the step, the
temperature against the target or start, the likely causes) once a run, and past any
temperature a structure survives (default 1e5 K) it stops as diverged (``MDDiverged``). Before,
NVE of Si8 at 30 fs ran its 14 steps to 9e7 K and ended as a success.

The runaway: diamond Si8, the reference weights, NVE from 300 K (seed 0) at 30 fs, written
every step: 300, 217, 921, 1.2e4, 1.3e5, 6e6 K at steps 0 to 5 (``md.temperature_watch``)."""

from __future__ import annotations

import logging
import math
import re

import pytest
from ase.build import bulk
from ase.io import read, write

from fastchgnet.cli import main
from fastchgnet.md.dynamics import run_md
from fastchgnet.md.outputs import MDDiverged
from fastchgnet.md.temperature_watch import TemperatureRunaway, watch_for

RUNAWAY = {"ensemble": "nve", "timestep": 30.0, "steps": 14, "loginterval": 1, "seed": 0}
CAUSES = r"\(timestep 30 fs too large\? a model not trained for these elements\?\)"
WARNING = re.compile(rf"md: temperature \d+ K at step \d+ is \d+x the start's 300 K: "
                     rf"the run is unstable {CAUSES}")  # fmt: skip


def silicon():
    return bulk("Si", "diamond", a=5.43, cubic=True)


def warnings_in(records) -> list[str]:
    return [r.getMessage() for r in records if r.getMessage().startswith("md: temperature")]


def test_md_warns_once_when_temperature_runs_away(model, caplog):
    """Without a progress bar the line is logged as a warning (Python prints it where logging
    is not set up); with no stop (max_temperature inf) the run heats on for 11 written steps
    above the bound and says so once."""
    with caplog.at_level(logging.WARNING, logger="fastchgnet.md"):
        atoms = run_md(silicon(), model, progress=False, compiled=False,
                       max_temperature=math.inf, **RUNAWAY)  # fmt: skip
    said = warnings_in(caplog.records)
    assert len(said) == 1, said
    assert WARNING.fullmatch(said[0]), said[0]
    assert [r.levelno for r in caplog.records if r.getMessage() == said[0]] == [logging.WARNING]
    assert atoms.info["max_temperature"] > 1e6  # K, the hottest written step


def test_md_stops_when_temperature_diverges(model, tmp_path, caplog):
    trajectory = tmp_path / "md.extxyz"
    logged = caplog.at_level(logging.WARNING, logger="fastchgnet.md")
    with logged, pytest.raises(MDDiverged) as stopped:
        run_md(silicon(), model, progress=False, compiled=False, trajectory=trajectory,
               **RUNAWAY)  # fmt: skip
    line = str(stopped.value)
    found = re.fullmatch(
        rf"md diverged at step (\d+) of 14: temperature (\d+) K is past 100000 K, \d+x the "
        rf"start's 300 K {CAUSES}; (\d+) frame\(s\) written",
        line,
    )
    assert found, line
    step, hottest, frames = map(int, found.groups())
    assert hottest > 1e5
    assert step < 14
    # the hot step's frame is written (one a step from step 0), and the warning came first
    assert frames == step + 1 == stopped.value.frames == len(read(trajectory, index=":"))
    assert len(warnings_in(caplog.records)) == 1


def test_a_steady_md_run_gives_no_warning_and_records_its_hottest_step(model, caplog):
    with caplog.at_level(logging.INFO, logger="fastchgnet.md"):
        atoms = run_md(silicon(), model, timestep=2.0, steps=20, loginterval=5,
                       progress=False, compiled=False, seed=0)  # fmt: skip
    assert warnings_in(caplog.records) == []
    assert 300.0 <= atoms.info["max_temperature"] < 600.0  # K: the start is 300 K


def test_the_bounds_follow_the_target_or_a_hotter_start():
    said: list[str] = []
    watch = watch_for("nvt", 300.0, 300.00000000000006, 2.0, said.append)
    assert (watch.reference, watch.what, watch.stop_above) == (300.0, "the target", 1e5)
    watch(1400.0, 10)  # below 5x 300 K
    watch(1600.0, 20)
    watch(9000.0, 30)  # once a run
    assert said == [
        "md: temperature 1600 K at step 20 is 5x the target 300 K: the run is unstable "
        "(timestep 2 fs too large? a model not trained for these elements? thermostat "
        "settings?); it stops above 100000 K"
    ]
    with pytest.raises(TemperatureRunaway, match="temperature 100001 K is past 100000 K"):
        watch(100001.0, 40)
    with pytest.raises(TemperatureRunaway, match="temperature nan K, not finite"):
        watch(float("nan"), 50)
    assert watch.hottest == 100001.0
    quench = watch_for("nvt", 300.0, 3000.0, 2.0, said.append)  # a hot start on purpose
    assert (quench.reference, quench.what, quench.stop_above) == (3000.0, "the start's", 1e5)
    assert watch_for("nvt", 20000.0, 20000.0, 1.0, said.append).stop_above == 2e5
    cold = watch_for("nve", 0.0, 0.0, 1.0, said.append, max_temperature=5000.0)
    cold(900.0, 1)
    cold(1100.0, 2)  # a 0 K run warns above 1000 K
    assert said[-1].startswith("md: temperature 1100 K at step 2 is far above the start's 0 K")
    assert said[-1].endswith("(timestep 1 fs too large? a model not trained for these elements?)"
                             "; it stops above 5000 K")  # fmt: skip


def test_a_small_cell_warns_only_past_its_own_thermostat_swings():
    """2 atoms (3 degrees of freedom) pass 5x their target about once in 500 checks at
    equilibrium: their bound is the chi-squared one of 1e-6 (10.2x); 8 atoms keep 5x."""
    said: list[str] = []
    small = watch_for("nvt", 300.0, 300.0, 2.0, said.append, degrees_of_freedom=3)
    assert 3000.0 < small.warn_above < 3100.0
    small(2500.0, 10)  # 8x the target: a swing of 3 degrees of freedom
    assert said == []
    small(3200.0, 20)
    assert said[0].startswith("md: temperature 3200 K at step 20 is 11x the target 300 K")
    assert watch_for("nvt", 300.0, 300.0, 2.0, said.append, degrees_of_freedom=24).warn_above == (
        1500.0
    )


@pytest.mark.parametrize("quiet", [False, True])
def test_the_md_command_says_once_that_the_run_heats_away_and_stops_it(quiet, tmp_path, capsys):
    """Printed above the progress bar, or by the --quiet notices: once either way."""
    write(tmp_path / "si.extxyz", silicon())
    command = ["md", str(tmp_path / "si.extxyz"), "--ensemble", "nve", "--timestep", "30",
               "--steps", "14", "--loginterval", "1", "--seed", "0", "--compile", "off",
               "-o", str(tmp_path / "md.extxyz")] + ["--quiet"] * quiet  # fmt: skip
    assert main(command) == 1
    err = capsys.readouterr().err
    lines = [line.strip() for line in re.split(r"[\r\n]", err) if "md: temperature" in line]
    assert len(lines) == 1, err
    assert WARNING.search(lines[0]), err
    assert re.search(r"error: md diverged at step \d+ of 14: temperature \d+ K is past", err)


def test_the_md_command_stops_at_its_max_temperature(tmp_path, capsys):
    write(tmp_path / "si.extxyz", silicon())
    command = ["md", str(tmp_path / "si.extxyz"), "--ensemble", "nve", "--timestep", "30",
               "--steps", "14", "--loginterval", "1", "--seed", "0", "--compile", "off",
               "--quiet", "-o", str(tmp_path / "md.extxyz")]  # fmt: skip
    assert main([*command, "--max-temperature", "5000"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: md diverged at step \d+ of 14: temperature \d+ K is past 5000 K", err)
    assert main([*command, "--max-temperature", "-1", "--overwrite"]) == 1
    said = "fastchgnet md: error: --max-temperature must be > 0 K (inf: never stop), got -1.0"
    assert capsys.readouterr().err.strip() == said
