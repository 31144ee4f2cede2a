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
import builtins
import keyword
import logging
import math
import re
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import sympy
import torch
from torch import Tensor, fx

log = logging.getLogger("fastchgnet.compile")

#: Functions a stored guard may call: what sympy's Python printer (torch's ``PythonPrinter``)
#: writes for floors, ceilings, roots, rounding, maxima, minima and casts of sizes.
GUARD_CALLS = frozenset(
    {"math.floor", "math.ceil", "math.trunc", "math.sqrt", "math.log2", "max", "min", "abs"}
    | {"round", "int", "float", "torch.sym_float", "torch._sym_sqrt"}
)
#: Constants a stored guard may read.
GUARD_CONSTANTS = frozenset({"math.inf", "math.nan"})
#: The only names a guard's code sees besides its sizes (no other builtins).
GUARD_NAMESPACE = {
    "__builtins__": {},
    "math": math,
    "torch": SimpleNamespace(sym_float=float, _sym_sqrt=math.sqrt),
    **{name: getattr(builtins, name) for name in ("max", "min", "abs", "round", "int", "float")},
}
#: Largest constant exponent of a stored guard's ``**`` (a larger one could take forever).
GUARD_MAX_EXPONENT = 8
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GUARD_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.BitAnd, ast.BitOr, ast.BitXor, ast.IfExp, ast.Compare, ast.Eq, ast.NotEq, ast.Lt,
    ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load, ast.Constant, ast.Call, ast.Attribute,
)  # fmt: skip


def checked_state(state: dict) -> dict:
    """``state`` (a stored guard's: text, arguments, positions) if it is only a size guard:
    ``arguments`` distinct identifiers, ``positions`` as many input indices, and ``text`` an
    expression ``checked_expression`` allows. Raises ValueError otherwise."""
    text, arguments, positions = state["text"], state["arguments"], state["positions"]
    if not isinstance(text, str) or not isinstance(arguments, list):
        raise ValueError("a size guard's text or arguments are not text")
    if (
        not all(isinstance(a, str) and _IDENTIFIER.fullmatch(a) for a in arguments)
        or len(set(arguments)) != len(arguments)
        or any(keyword.iskeyword(a) for a in arguments)
    ):
        raise ValueError(f"a size guard's arguments are not distinct names: {arguments[:8]}")
    if not isinstance(positions, list) or len(positions) != len(arguments):
        raise ValueError("a size guard's positions do not match its arguments")
    if not all(type(k) is int and k >= 0 for k in positions):
        raise ValueError("a size guard's positions are not input indices")
    checked_expression(text, arguments)
    return {"text": text, "arguments": list(arguments), "positions": list(positions)}


def checked_expression(text: str, names: Sequence[str]) -> None:
    """Raise ValueError unless ``text`` is one Python expression of ``names``, numbers,
    arithmetic (``**`` by a constant of at most ``GUARD_MAX_EXPONENT``, of no power),
    comparisons, boolean and conditional operators, the calls ``GUARD_CALLS`` and
    ``GUARD_CONSTANTS``."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"a size guard is not an expression: {text[:80]!r}") from exc
    callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    modules = set()  # the ``math`` / ``torch`` of an allowed call or constant
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES):
            raise ValueError(f"a size guard holds {type(node).__name__}: {text[:80]!r}")
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool):
            raise ValueError(f"a size guard holds the constant {node.value!r}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int):
                raise ValueError("a size guard raises to a power that is not a constant")
            if not 0 <= exponent.value <= GUARD_MAX_EXPONENT:
                raise ValueError(f"a size guard raises to the power {exponent.value}")
            if any(isinstance(inner, ast.Pow) for inner in ast.walk(node.left)):
                raise ValueError("a size guard raises a power to a power")
        if isinstance(node, ast.Call) and (
            node.keywords or ast.unparse(node.func) not in GUARD_CALLS
        ):
            raise ValueError(f"a size guard calls {ast.unparse(node.func)}")
        if isinstance(node, ast.Attribute):
            allowed = GUARD_CALLS if id(node) in callees else GUARD_CONSTANTS
            if ast.unparse(node) not in allowed or not isinstance(node.value, ast.Name):
                raise ValueError(f"a size guard reads {ast.unparse(node)}")
            modules.add(id(node.value))
        called = id(node) in callees and getattr(node, "id", None) in GUARD_CALLS
        module = id(node) in modules
        if isinstance(node, ast.Name) and node.id not in names and not (called or module):
            raise ValueError(f"a size guard names {node.id}, not one of its sizes")


def _lambda(text: str, arguments: Sequence[str]) -> Callable[..., object]:
    """``lambda *arguments: text`` made from syntax trees (no text is pasted together),
    run with ``GUARD_NAMESPACE`` only."""
    body = ast.parse(text, mode="eval").body
    signature = ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=name) for name in arguments], vararg=None,
        kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[],
    )  # fmt: skip
    tree = ast.fix_missing_locations(ast.Expression(ast.Lambda(args=signature, body=body)))
    return eval(compile(tree, "<size guard>", "eval"), dict(GUARD_NAMESPACE))


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
        self._check = _lambda(self.text, self.arguments)

    def __getstate__(self) -> dict:  # pickled by a background build: the text, not the code
        return {key: value for key, value in vars(self).items() if key not in ("_check", "_failed")}

    @classmethod
    def from_state(cls, state: dict) -> SizeGuard:
        """The guard whose ``__getstate__`` was ``state``, read back from the store: checked
        first (``checked_state``).

        Raises:
            ValueError: the state is more than a size guard."""
        guard = cls.__new__(cls)
        guard.__setstate__(checked_state(state))
        return guard

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._compile()

    def __call__(self, inputs: Sequence[Tensor]) -> bool:
        """Whether the graph holds for ``inputs`` (the graph's inputs, in order); a guard that
        cannot be evaluated for them (a stored one: a division by zero) does not hold."""
        try:
            return bool(self._check(*[inputs[k].shape[0] for k in self.positions]))
        except Exception as exc:
            if not vars(self).get("_failed"):  # said once: guards are asked every call
                log.warning("a size guard failed (%r); its graph is not used", exc)
                self._failed = True
            return False


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
