"""Running a potential: ASE calculator, relaxation and molecular dynamics."""

from fastchgnet.md.calculator import Calculator, evaluate_graphs
from fastchgnet.md.dynamics import make_integrator, run_md
from fastchgnet.md.relax import RelaxResult, relax
from fastchgnet.md.velocities import start_momenta
from fastchgnet.md.verlet_graph import VerletGraph
from fastchgnet.model.potential import EagerPotential, Potential, predict_structures

__all__ = [
    "Calculator",
    "EagerPotential",
    "Potential",
    "RelaxResult",
    "VerletGraph",
    "evaluate_graphs",
    "make_integrator",
    "predict_structures",
    "relax",
    "run_md",
    "start_momenta",
]
