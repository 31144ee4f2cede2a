"""A traced aten graph run by TorchScript's interpreter: a capture that builds in seconds.

Inductor turns a traced graph (``trace.trace_program``) into fused C++ kernels; on a CPU that
build takes 20-60 s. TorchScript's interpreter runs the same aten graph op by op in C++: no
kernel is generated or fused, but no Python runs per op either, and the build takes well under
a second after the 1-2 s trace. On small structures, where an eager call is mostly per-op
overhead (Python, autograd bookkeeping, the derivative graph), that is most of the gain: the
LiMnO2 force-and-stress call (8 atoms, 1461 graph ops, 2 threads) took 7.0 ms against 9.8 ms
eager and 10.0 ms for the same graph run by FX's Python code.

torch 2.13 marks ``torch.jit.script`` deprecated (its warning is silenced here, where the use
is deliberate). A torch without it, or Python 3.14 and later (where torch does not support
it), leaves TorchScript out of the compile decision (``decide.capture_backends``), and asking
for it by name raises in one line.
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import fx


def script_graph(graph_module: fx.GraphModule) -> torch.jit.ScriptModule:
    """``graph_module`` (a ``trace.trace_program`` graph; changed in place) as a TorchScript
    module with the same inputs and outputs.

    TorchScript resolves an op by its schema, so each node's overload (``aten.add.Tensor``)
    becomes its packet (``aten.add``), and devices in keyword arguments become their names
    with the index ("cuda:1"), which TorchScript converts back to devices."""
    from torch._functorch.compile_utils import strip_overloads

    if not available():
        raise RuntimeError(
            f"TorchScript is not available with torch {torch.__version__} on Python "
            f"{sys.version_info.major}.{sys.version_info.minor}: use the inductor capture"
        )
    strip_overloads(graph_module)
    for node in graph_module.graph.nodes:
        if any(isinstance(value, torch.device) for value in node.kwargs.values()):
            node.kwargs = {
                key: str(value) if isinstance(value, torch.device) else value
                for key, value in node.kwargs.items()
            }
    graph_module.recompile()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "The TorchScript type system", UserWarning)
        return torch.jit.script(graph_module)


def available() -> bool:
    """Whether TorchScript can be used here: this torch still has ``torch.jit.script``, and
    Python is older than 3.14 (torch does not support TorchScript on 3.14 and later)."""
    return sys.version_info < (3, 14) and callable(getattr(torch.jit, "script", None))
