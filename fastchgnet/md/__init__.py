"""Running a potential: ASE calculator, relaxation and molecular dynamics."""

from fastchgnet.md.calculator import Calculator, Potential, evaluate_graphs
from fastchgnet.md.neighbours import VerletGraph

__all__ = ["Calculator", "Potential", "VerletGraph", "evaluate_graphs"]
