"""Running a potential: ASE calculator, relaxation and molecular dynamics."""

from fastchgnet.md.calculator import Calculator, GraphPotential, Potential, evaluate_graphs
from fastchgnet.md.dynamics import make_integrator, run_md
from fastchgnet.md.neighbours import VerletGraph
from fastchgnet.md.relax import RelaxResult, relax

__all__ = [
    "Calculator",
    "GraphPotential",
    "Potential",
    "RelaxResult",
    "VerletGraph",
    "evaluate_graphs",
    "make_integrator",
    "relax",
    "run_md",
]
