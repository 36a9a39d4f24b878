"""Typed option schemas and closed registries: how values read from a file become medrecon objects.

A checkpoint's metadata (and a task config) names what to build, e.g. ``{"_target_": "medrecon.nn.unet.UNet",
"channels": [32, 64], ...}``. Nothing in such a mapping is ever imported, called or passed to
``hydra.utils.instantiate``: the ``_target_`` string is only a *key* into a closed registry of medrecon's own
classes (:class:`Buildable`), and every other key must be an option of that class's schema, of the declared
type and inside the declared range. Checks refuse rather than convert:

- a ``bool`` is not an ``int`` (nor an int a bool), a string is not a number, and no float is NaN or infinite;
- a list or dict where a scalar belongs is refused, so a nested ``{"_target_": ...}`` cannot ride inside a value;
- unknown option names are refused, which covers Hydra's ``_recursive_``, ``_args_``, ``_partial_`` and
  ``_convert_``;
- every number has a range, so a value that would allocate terabytes is refused before anything is built.

Refusals raise :class:`SchemaError` (a ``ValueError``) with one line naming the field; values quoted from a file
are shortened and ``repr``-escaped so a message never spans lines.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TARGET = "_target_"
MAX_QUOTE = 60  # characters of a refused value quoted in a message


class SchemaError(ValueError):
    """A value read from a file (or given as an option) does not fit its schema; one line, names the field."""


def quote(value: Any) -> str:
    """``repr(value)``, shortened to :data:`MAX_QUOTE` characters (one line, whatever the value holds)."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]`` (``None`` too when ``optional``); a bool is refused."""

    low: int
    high: int
    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        if value is None and self.optional:
            return value
        if not _is_int(value) or not self.low <= value <= self.high:
            raise SchemaError(f"{where}={quote(value)} must be an integer in {self.low}..{self.high}")
        return value


@dataclass(frozen=True)
class Float:
    """A finite number (int or float, not bool) in ``[low, high]`` (``None`` too when ``optional``)."""

    low: float
    high: float
    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        if value is None and self.optional:
            return value
        if not _is_real(value) or not math.isfinite(value) or not self.low <= value <= self.high:
            raise SchemaError(
                f"{where}={quote(value)} must be a finite number in [{self.low:g}, {self.high:g}]"
            )
        return value


@dataclass(frozen=True)
class Bool:
    """``true`` or ``false`` (an integer 0/1 is refused)."""

    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        if (value is None and self.optional) or isinstance(value, bool):
            return value
        raise SchemaError(f"{where}={quote(value)} must be true or false")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    values: tuple[str, ...]
    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        if (value is None and self.optional) or (isinstance(value, str) and value in self.values):
            return value
        raise SchemaError(f"{where}={quote(value)} is not one of {', '.join(self.values)}")


@dataclass(frozen=True)
class Text:
    """A short name: at most ``max_len`` characters of letters, digits and ``_ . + -`` (no spaces or paths)."""

    max_len: int = 64
    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        if value is None and self.optional:
            return value
        if not isinstance(value, str) or not re.fullmatch(rf"[A-Za-z0-9_.+\-]{{1,{self.max_len}}}", value):
            raise SchemaError(
                f"{where}={quote(value)} must be a name of 1..{self.max_len} letters, digits, '_', '.', '+', '-'"
            )
        return value


@dataclass(frozen=True)
class Seq:
    """A list (tuple, ``ListConfig``) of ``min_len..max_len`` items, each checked by ``item``."""

    item: Any
    min_len: int
    max_len: int

    def check(self, value: Any, where: str) -> Any:
        is_seq = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
        if not is_seq or not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(
                f"{where}={quote(value)} must be a list of {self.min_len}..{self.max_len} items"
            )
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")
        return value


Option = Int | Float | Bool | Choice | Text | Seq


def check_mapping(
    value: Any, schema: Mapping[str, Option], where: str, required: Sequence[str] = ()
) -> dict[str, Any]:
    """``value`` as a dict after checking that it is a mapping of known keys with values of their types.

    Raises:
        SchemaError: not a mapping, an unknown or missing key, or a value of the wrong type or range.
    """
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where} must be a mapping, got {type(value).__name__}")
    unknown = [k for k in value if k not in schema]
    if unknown:
        names = ", ".join(quote(k) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SchemaError(f"{where}: unknown key(s) {names}; allowed: {', '.join(schema)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise SchemaError(f"{where}: missing key(s) {', '.join(missing)}")
    for key, item in value.items():
        schema[key].check(item, f"{where}.{key}")
    return dict(value)


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Buildable:
    """One of medrecon's own classes, buildable from a mapping read from a file.

    Attributes:
        load: returns the class (a lazy import of medrecon's own module, so registries stay cheap to import).
        options: the constructor options a file may set, with their types and ranges (shape facts that come
            from elsewhere, such as a network's channel counts, are not options).
    """

    load: Callable[[], type]
    options: Mapping[str, Option]


def resolve(registry: Mapping[str, Buildable], cfg: Any, where: str) -> tuple[type, dict[str, Any]]:
    """The class named by ``cfg["_target_"]`` in ``registry`` and the checked remaining options.

    Raises:
        SchemaError: ``cfg`` is not a mapping, names no registered class, or has an option that does not fit.
    """
    if not isinstance(cfg, Mapping):
        raise SchemaError(f"{where} must be a mapping with a {TARGET}, got {type(cfg).__name__}")
    target = cfg.get(TARGET)
    if not isinstance(target, str) or target not in registry:
        first = {id(b): name for name, b in reversed(registry.items())}  # one name per class: the first
        known = ", ".join(name for name in registry if first[id(registry[name])] == name)
        raise SchemaError(f"{where}.{TARGET}={quote(target)} is not one of medrecon's {known}")
    options = check_mapping({k: v for k, v in cfg.items() if k != TARGET}, registry[target].options, where)
    return registry[target].load(), options


def check_plain(value: Any, where: str, max_depth: int = 32) -> Any:
    """``value`` after checking that it is plain JSON data (no OmegaConf interpolation strings, bounded depth).

    Used for a stored run config, which is only ever read (``OmegaConf.select``), never instantiated; an
    interpolation such as ``${oc.env:...}`` would be resolved when read, so it is refused.
    """
    stack = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            raise SchemaError(f"{where} is nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise SchemaError(f"{path} has a non-string key {quote(k)}")
                stack.append((v, f"{path}.{k}", depth + 1))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, str):
            if "${" in item:
                raise SchemaError(
                    f"{path}={quote(item)} holds an interpolation; a stored config holds values"
                )
        elif item is not None and not isinstance(item, (bool, int, float)):
            raise SchemaError(f"{path} holds a {type(item).__name__}, not plain JSON data")
    return value
