"""A POSCAR's lines checked before pymatgen (or ASE) reads them: a file whose lines do not say
what they hold is refused in one line naming the file, the line and the problem, where the
readers fail on a numpy broadcast or read it silently wrong (two element names over one count
read as one element, a count one short dropping the last atom)."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

#: the file names pymatgen's ``Structure.from_file`` reads as a POSCAR (CIFs aside)
POSCAR_NAMES = ("*poscar*", "*contcar*", "*.vasp")
#: first words of the lines below the counts (Selective dynamics, Direct, Cartesian)
MODE_WORDS = ("sel", "dir", "car")


def is_poscar(path: Path) -> bool:
    """Whether pymatgen reads ``path`` as a POSCAR (a name with POSCAR, CONTCAR or .vasp)."""
    name = path.name.lower()
    return ".cif" not in name and any(fnmatch(name, pattern) for pattern in POSCAR_NAMES)


def check_poscar(path: Path) -> None:
    """Raise a one-line ValueError (``path: problem``) where a POSCAR (``is_poscar``: other
    files pass unread) has a scale, lattice, element names, counts, Direct/Cartesian line or
    coordinate lines that are not what VASP reads; a valid file passes (VASP 4 without names,
    Selective dynamics, a per-axis or negative scale, velocities after the coordinates, ``#``
    or ``!`` comments, words after a position)."""
    if not is_poscar(path):
        return
    from monty.io import zopen  # POSCAR.gz too, as pymatgen reads it

    with zopen(path, "rb") as file:
        text = file.read().decode(errors="replace")
    rows = [line.split("#")[0].split("!")[0].split() for line in text.splitlines()]
    problem = _cell_problem(rows + [[]] * 8) if any(rows) else "the file is empty"
    if problem:
        raise ValueError(f"{path}: {problem}")


def _numbers(tokens: list[str], kind: type = float) -> list | None:
    """``tokens`` as numbers of ``kind``, or None if one is not."""
    try:
        return [kind(token) for token in tokens]
    except ValueError:
        return None


def _shown(row: list[str]) -> str:
    """A line as an error quotes it."""
    return f"'{' '.join(row)}'" if row else "an empty line (or the end of the file)"


def _cell_problem(rows: list[list[str]]) -> str | None:
    """What is wrong in the scale and lattice lines, else below (``_counts_problem``); None:
    nothing. ``rows``: each line's words, empty ones after the file's end."""
    numeric = [_numbers([word]) is not None for word in rows[1][:3]] + [False]
    scale = _numbers(rows[1][: numeric.index(False)]) or []  # as ASE reads it: 1 or 3
    if len(scale) not in (1, 3):
        return f"line 2 should be the scale factor (one number, or three), not {_shown(rows[1])}"
    if 0 in scale or (len(scale) == 3 and min(scale) < 0):
        return (
            f"the scale on line 2 is {' '.join(rows[1][: len(scale)])}: give a positive factor "
            "(or three), or a negative number for the cell's volume"
        )
    for axis in (2, 3, 4):
        if _numbers(rows[axis][:3]) is None or len(rows[axis]) < 3:
            vector = f"lattice vector {axis - 1} (three numbers)"
            return f"line {axis + 1} should be {vector}, not {_shown(rows[axis])}"
    return _counts_problem(rows)


def _counts_problem(rows: list[list[str]]) -> str | None:
    """What is wrong in the element names and counts (VASP 5: lines of names, then as many
    of counts; VASP 4: a line of counts), else below (``_coordinates_problem``)."""
    start = 5
    while rows[start] and not any(_numbers([word]) for word in rows[start]):
        if rows[start][0].lower().startswith(MODE_WORDS):
            break  # the counts line is missing
        start += 1
    names = [name for row in rows[5:start] for name in row]
    count_rows = rows[start : start + max(start - 5, 1)]
    counts = _numbers([count for row in count_rows for count in row], int)
    if not all(count_rows) or counts is None or min(counts) < 0 or sum(counts) == 0:
        shown = ", ".join(_shown(row) for row in count_rows)
        where = f"lines {start + 1}-{start + len(count_rows)}" if start > 6 else f"line {start + 1}"
        counts_are = "the atom counts (whole numbers, none negative, not all 0)"
        return f"{where} should be {counts_are}, not {shown}"
    if names and len(names) != len(counts):
        return (
            f"{len(names)} element name{'s' * (len(names) > 1)} ({' '.join(names)}) but "
            f"{len(counts)} count{'s' * (len(counts) > 1)} ({' '.join(map(str, counts))})"
        )
    return _coordinates_problem(rows, start + len(count_rows), sum(counts))


def _is_position(row: list[str]) -> bool:
    """Whether a line starts with three numbers (as pymatgen splits '0.5-0.25-0.1')."""
    tokens = row if len(row) >= 3 else " ".join(row).replace("-", " -").split()
    return len(tokens) >= 3 and _numbers(tokens[:3]) is not None


def _coordinates_problem(rows: list[list[str]], mode: int, atoms: int) -> str | None:
    """What is wrong from the line ``mode`` (Selective dynamics or Direct/Cartesian) on: the
    mode missing, or ``atoms`` coordinate lines not following it."""
    if rows[mode] and rows[mode][0][0] in "sS":
        mode += 1
    if not rows[mode] or _is_position(rows[mode]):
        return f"line {mode + 1} should say Direct or Cartesian, not {_shown(rows[mode])}"
    found = 0
    while _is_position(rows[mode + 1 + found]):
        found += 1
    if found < atoms and rows[mode + 1 + found]:
        line, shown = mode + 2 + found, _shown(rows[mode + 1 + found])
        return f"line {line} (atom {found + 1}) should be three numbers, not {shown}"
    if found != atoms:
        says = f"{atoms} atom{'s' * (atoms > 1)}"
        follow = "1 coordinate line follows" if found == 1 else f"{found} coordinate lines follow"
        return f"counts line says {says}, but {follow}"
    return None
