"""Checks of typed settings, each declared once on its settings dataclass.

A settings dataclass (one per configuration concern) declares

* every choice as a ``Literal`` annotation, e.g. ``eviction: Eviction = "lru"`` with
  ``Eviction = Literal["lru", "lfu", "fifo"]`` (code that needs the values at run time reads
  them with :func:`choices`, never a second list);
* every numeric range once, in a table its ``__post_init__`` passes to :func:`check`,
  e.g. ``check(self, {"max_queue": at_least(1), "port": between(0, 65535)})``.

:func:`check` raises :class:`SettingError` naming the field, so the configuration loader
reports the full dotted key (``engine.max_batch_size must be >= 1, got 0``) whether the
value came from the file, the environment or code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SettingError(ValueError):
    """A setting has a value outside what its field allows."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        #: The field's name (the loader prefixes the section: ``engine.max_queue``).
        self.field = field
        #: What is wrong, e.g. ``must be >= 1, got 0``.
        self.problem = problem


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting (``None`` = unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    #: False: the value must be strictly above ``low``.
    low_inclusive: bool = True

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range, or None when it is in range (NaN never is)."""
        if isinstance(value, float) and math.isnan(value):
            return f"must be a number, got {value}"
        too_low = self.low is not None and (
            value < self.low if self.low_inclusive else value <= self.low
        )
        too_high = self.high is not None and value > self.high
        if not (too_low or too_high):
            return None
        if self.low is not None and self.high is not None:
            opening = "[" if self.low_inclusive else "("
            return f"must be in {opening}{_num(self.low)}, {_num(self.high)}], got {value}"
        if too_high:
            return f"must be <= {_num(self.high)}, got {value}"
        return f"must be {'>=' if self.low_inclusive else '>'} {_num(self.low)}, got {value}"


def _num(x: float | None) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def at_least(low: float) -> Range:
    """``value >= low``."""
    return Range(low=low)


def above(low: float) -> Range:
    """``value > low``."""
    return Range(low=low, low_inclusive=False)


def between(low: float, high: float) -> Range:
    """``low <= value <= high``."""
    return Range(low=low, high=high)


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` annotation allows (``Optional`` unwrapped); () for others."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return choices(args[0]) if len(args) == 1 else ()
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return ()


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def check(obj: Any, ranges: Mapping[str, Range] | None = None) -> None:
    """Check every ``Literal`` field of dataclass ``obj`` and the ``ranges`` given.

    Raises :class:`SettingError` for the first field that is out of bounds. ``None`` passes
    a range (optional settings are unset).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = choices(hints[f.name])
        value = getattr(obj, f.name)
        if allowed and value not in allowed and not (value is None and _optional(hints[f.name])):
            raise SettingError(
                f.name, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            )
    for name, bounds in (ranges or {}).items():
        value = getattr(obj, name)
        if value is None:
            continue
        problem = bounds.problem(value)
        if problem is not None:
            raise SettingError(name, problem)


def require(ok: bool, field: str, problem: str) -> None:
    """Raise :class:`SettingError` for ``field`` unless ``ok`` (cross-field rules)."""
    if not ok:
        raise SettingError(field, problem)


__all__ = [
    "Range",
    "SettingError",
    "above",
    "at_least",
    "between",
    "check",
    "choices",
    "require",
]
