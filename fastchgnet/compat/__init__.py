"""Drop-in names of the reference ``chgnet`` package: change one import line.

    from fastchgnet.compat import CHGNet, CHGNetCalculator, StructOptimizer, MolecularDynamics
    from fastchgnet.compat import StructureData, get_train_val_test_loader, Trainer
    from fastchgnet.compat import EquationOfState, CrystalGraphConverter
    from fastchgnet.compat.utils import read_json, write_json, parse_vasp_dir, determine_device

They take the reference's arguments and give its keys and units; what they do not support
raises ``NotImplementedError`` saying so and what to use instead.
"""

from fastchgnet.compat.dynamics import CHGNetCalculator, StructOptimizer, TrajectoryObserver
from fastchgnet.compat.eos import EquationOfState
from fastchgnet.compat.graph import CrystalGraphConverter
from fastchgnet.compat.model import CHGNet
from fastchgnet.compat.molecular_dynamics import CrystalFeasObserver, MolecularDynamics
from fastchgnet.compat.trainer import Trainer
from fastchgnet.compat.training import StructureData, get_loader, get_train_val_test_loader

__all__ = [
    "CHGNet",
    "CHGNetCalculator",
    "CrystalFeasObserver",
    "CrystalGraphConverter",
    "EquationOfState",
    "MolecularDynamics",
    "StructOptimizer",
    "StructureData",
    "Trainer",
    "TrajectoryObserver",
    "get_loader",
    "get_train_val_test_loader",
]
