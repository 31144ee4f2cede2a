"""Which input sizes a symbolic trace holds for (``SizeGuard``), checked per call.

A ``free_counts`` trace (``trace.trace_program``) is valid only for the sizes its shape
environment's guards allow. ``SizeGuard`` prints them as one Python expression over the first
sizes of the graph's inputs. TorchScript graphs kept on disk (``store.ScriptShelf``) keep that
text, so a guard is checked before it is compiled (``checked_expression``): the names of its
sizes, numbers, arithmetic, comparisons, ``and`` / ``or`` / ``not`` and the calls
``GUARD_CALLS``, nothing else. A store file that says more does not run.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Sequence

import sympy
import torch
from torch import Tensor, fx

log = logging.getLogger("fastchgnet.compile")

#: Calls a guard's text may make: what sympy's Python printer writes for floors, ceilings,
#: roots, maxima and minima of sizes.
GUARD_CALLS = frozenset({"math.floor", "math.ceil", "math.trunc", "math.sqrt", "max", "min", "abs"})
#: The builtins among ``GUARD_CALLS``, the only names a guard's code sees besides ``math``.
GUARD_BUILTINS = {"max": max, "min": min, "abs": abs}
_GUARD_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load,
    ast.Constant, ast.Call, ast.Attribute,
)  # fmt: skip


def checked_expression(text: str, names: Sequence[str]) -> None:
    """Raise ValueError unless ``text`` is one Python expression of ``names``, numbers,
    arithmetic, comparisons, boolean operators and the calls ``GUARD_CALLS``."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"a size guard is not an expression: {text[:80]!r}") from exc
    callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES):
            raise ValueError(f"a size guard holds {type(node).__name__}: {text[:80]!r}")
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool):
            raise ValueError(f"a size guard holds the constant {node.value!r}")
        if isinstance(node, ast.Call) and (
            node.keywords or ast.unparse(node.func) not in GUARD_CALLS
        ):
            raise ValueError(f"a size guard calls {ast.unparse(node.func)}")
        if isinstance(node, ast.Attribute) and (
            id(node) not in callees or ast.unparse(node) not in GUARD_CALLS
        ):
            raise ValueError(f"a size guard reads {ast.unparse(node)}")
        called = id(node) in callees and getattr(node, "id", None) in GUARD_CALLS
        if isinstance(node, ast.Name) and node.id not in (*names, "math") and not called:
            raise ValueError(f"a size guard names {node.id}, not one of its sizes")


class SizeGuard:
    """For which input sizes a ``free_counts`` trace holds, as one compiled Python expression
    over the first sizes of the graph's inputs: its shape environment's guards, the symbols it
    equated or fixed, every free size's range (a symbol is made only for sizes of 2 and more,
    and checks against 0 or 1 are then settled by that range without a guard), and the first
    sizes of 0 or 1 it traced as constants (inputs from ``free_from`` on)."""

    def __init__(self, graph_module: fx.GraphModule, free_from: int) -> None:
        from torch.utils._sympy.numbers import int_oo
        from torch.utils._sympy.printers import PythonPrinter

        env = graph_module.shape_env
        placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
        exprs = [guard.expr for guard in env.guards]
        exprs += [sympy.Eq(symbol, value) for symbol, value in env.replacements.items()]
        free = [node.meta["val"].shape[0] for node in placeholders[free_from:]]
        symbols = {s for expr in exprs for s in expr.free_symbols}
        symbols |= {s for size in free if isinstance(size, torch.SymInt) for s in _symbols(size)}
        symbols = sorted(symbols, key=str)
        for symbol in symbols:  # the range each symbol was traced for, [2, inf) unless narrowed
            bounds = env.var_to_range[symbol]
            exprs.append(sympy.Ge(symbol, bounds.lower))
            if bounds.upper not in (sympy.oo, int_oo):
                exprs.append(sympy.Le(symbol, bounds.upper))
        self.positions = [_input_position(env, symbol) for symbol in symbols]
        printer = PythonPrinter()
        tests = [printer.doprint(expr) for expr in exprs]
        arguments = list(map(str, symbols))
        for k, size in enumerate(free, start=free_from):
            if isinstance(size, int):  # a 0 or 1 made a constant: no symbol, no guard
                arguments.append(f"fixed{k}")
                tests.append(f"fixed{k} == {size}")
                self.positions.append(k)
        self.text = " and ".join(f"({test})" for test in tests) or "True"
        self.arguments = arguments
        self._compile()

    def _compile(self) -> None:
        """Make the check from ``text`` once ``checked_expression`` allows it (a guard read
        from the store is text: only size arithmetic and comparisons of ``arguments`` run)."""
        checked_expression(self.text, self.arguments)
        code = f"lambda {', '.join(self.arguments)}: {self.text}"
        self._check = eval(code, {"__builtins__": {}, "math": math, **GUARD_BUILTINS})

    def __getstate__(self) -> dict:  # pickled by a background build: the text, not the code
        return {key: value for key, value in vars(self).items() if key != "_check"}

    @classmethod
    def from_state(cls, state: dict) -> SizeGuard:
        """The guard whose ``__getstate__`` was ``state`` (a stored graph's).

        Raises:
            ValueError: its text is more than size arithmetic and comparisons."""
        guard = cls.__new__(cls)
        guard.__setstate__(dict(state))
        return guard

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._compile()

    def __call__(self, inputs: Sequence[Tensor]) -> bool:
        """Whether the graph holds for ``inputs`` (the graph's inputs, in order)."""
        return bool(self._check(*[inputs[k].shape[0] for k in self.positions]))


def _symbols(size: torch.SymInt) -> set[sympy.Symbol]:
    """The size symbols in a symbolic size."""
    return set(size.node.expr.free_symbols)


def _input_position(env: object, symbol: sympy.Symbol) -> int:
    """Which graph input's first size ``symbol`` stands for (``trace._symbolic_inputs`` names
    input k's source "input{k}")."""
    from torch._dynamo.source import TensorProperty

    source = env.var_to_sources[symbol][0]  # type: ignore[attr-defined]
    name, index = source.base.name, getattr(source, "idx", None)
    first_size = getattr(source, "prop", None) is TensorProperty.SIZE and index == 0
    if not name.startswith("input") or not first_size:
        raise RuntimeError(f"size symbol {symbol} is not a first size of an input ({source})")
    return int(name.removeprefix("input"))


def kept_guard(state: dict) -> SizeGuard | None:
    """The guard of a kept graph's ``state``, or None (reported) when its text is more than
    a size guard says."""
    try:
        return SizeGuard.from_state(state)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("a kept TorchScript graph's size guard is not used (%s)", exc)
        return None
