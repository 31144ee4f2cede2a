"""Errors raised for bad input: each names the structure (or the setting) and the problem."""

from __future__ import annotations

import json
from typing import Any


class StructureError(ValueError):
    """A structure cannot be turned into a graph or predicted.

    The message always starts with the structure's name (its id, label or formula and its
    position in the input), followed by what is wrong with it.
    """

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ValueError in one line starting with ``what`` (the
    setting or file it came from) where it is not JSON or not an object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a JSON object")
    return data
