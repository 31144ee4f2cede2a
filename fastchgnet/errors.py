"""Errors raised for bad input: each names the structure and the problem."""

from __future__ import annotations


class StructureError(ValueError):
    """A structure cannot be turned into a graph or predicted.

    The message always starts with the structure's name (its id, label or formula and its
    position in the input), followed by what is wrong with it.
    """

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")
