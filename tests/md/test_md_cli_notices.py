"""``fastchgnet md``'s one-line notices: --quiet hides the progress bar only (the compile
decision and a start from stored momenta still say so on stderr), a restart of NVE does not
speak of a thermostat, and Ctrl-C or SIGTERM while the command loads ends it with one line
and 130 / 143 rather than a KeyboardInterrupt traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from ase.md.velocitydistribution import thermalize_momenta

from fastchgnet.cli import main


def test_quiet_still_says_where_the_run_starts_and_what_it_compiles(tmp_path, capsys):
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    thermalize_momenta(atoms, temperature_K=450, rng=np.random.default_rng(0))
    write(tmp_path / "run.extxyz", atoms)
    command = ["md", f"{tmp_path / 'run.extxyz'}@-1", "--steps", "2", "--ensemble", "nve",
               "-o", str(tmp_path / "md.extxyz"), "--quiet"]  # fmt: skip
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "starting from the momenta stored in" in err
    assert "(nve: no thermostat, --temperature is not used)" in err
    assert "thermostat's target" not in err
    assert "compile off for this 2-step MD" in err


PROGRAM = """
import os, signal, sys
import fastchgnet


class Stop:  # a signal arriving while the command's modules load (torch, ASE, ...)
    def find_spec(self, name, path=None, target=None):
        if name == "{module}":
            os.kill(os.getpid(), {signum})
        return None


sys.meta_path.insert(0, Stop())
from fastchgnet.cli import main

sys.exit(main(["md", "nothing.cif"]))
"""


@pytest.mark.parametrize("module", ["fastchgnet.cli.commands", "torch"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_command_loads_ends_it_in_one_line(signum, code, module):
    """Also while torch loads (the first second): ``import fastchgnet`` loaded torch before
    the command's own handling began, and a Ctrl-C then was a traceback."""
    program = textwrap.dedent(PROGRAM.format(signum=int(signum), module=module))
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == "fastchgnet: interrupted while starting"


SWALLOWED = """
import os, signal, sys
import fastchgnet


class Stop:  # a stop where the import machinery drops what it raises ("Exception ignored")
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            try:
                os.kill(os.getpid(), {signum})
            except BaseException:
                pass
        return None


sys.meta_path.insert(0, Stop())
from fastchgnet.cli import main

sys.exit(main(["md", "nothing.cif"]))
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_an_import_runs_is_held_until_it_has_loaded(signum, code):
    """Raised inside an import, a stop could be dropped by the import machinery (the command
    then ran on: 'no such file' here) or leave a module half made (numpy's 'no attribute
    _umath_linalg'); held back until the modules have loaded, it ends the command."""
    program = textwrap.dedent(SWALLOWED.format(signum=int(signum)))
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == "fastchgnet: interrupted while starting"
