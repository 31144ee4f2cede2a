"""The one type check of a typed setting's value (a bool that is a bool, a float that is a
number, one of a Literal's choices), for settings that arrive as loose values: JSON on the
command line (``--labels``), TOML/JSON run configs, dataclasses built in Python.

``coerce`` was the run config's (``train.config``); it lives here, below ``train``, so that
the data layer's settings (``ase_labels.AseLabels``) check their values with it too.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, Literal


def coerce(kind: Any, value: Any, name: str) -> Any:
    """``value`` checked against the annotation ``kind``: an int where a float is asked becomes
    a float, a list where a tuple is asked a tuple; anything else of the wrong type is a
    ValueError of one line, ``<name>=<value!r>: expected true or false`` (or the type asked)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name}={value!r}: choose one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r}: expected a list")
        inner = args[0]
        if args[-1] is not Ellipsis and len(args) != len(value):
            raise ValueError(f"{name}={value!r}: expected {len(args)} entries")
        return tuple(coerce(inner, v, name) for v in value)
    if origin in (dict,) or kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}={value!r}: expected a table")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"setting {name}: unions are not supported")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name}={value!r}: expected an integer")
    if not isinstance(value, kind):
        raise ValueError(f"{name}={value!r}: expected {kind.__name__}")
    return value


def coerce_fields(instance: Any, where: str = "") -> None:
    """Check every field of the (frozen or not) dataclass ``instance`` with ``coerce`` and
    store the coerced values (an int limit becomes a float); messages name ``where`` + field."""
    hints = typing.get_type_hints(type(instance))
    for field in fields(instance):
        value = coerce(hints[field.name], getattr(instance, field.name), where + field.name)
        object.__setattr__(instance, field.name, value)
