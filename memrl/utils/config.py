"""Check configuration dataclasses against their type annotations, so a YAML typo is one clear line.

YAML hands over strings, numbers, lists and mappings, and a dataclass built from them with a
wrong type fails far from the cause: ``horizon: "2"`` raises a ``TypeError`` deep inside the
first comparison, and ``datasets: inverted`` (a string, not a list) is iterated letter by
letter. :func:`check_fields` tests every field of a dataclass instance against its annotation
(read with :func:`typing.get_type_hints`, so ``from __future__ import annotations`` is fine) and
coerces only where nothing is lost: an integer where a number is expected becomes a float, a
list where a tuple is expected becomes a tuple (YAML has no tuples), a path where a string is
expected becomes that string.

Supported annotations: ``int`` (a bool is refused; numpy integers become ints), ``float`` (an
int or numpy number is accepted and becomes a float), ``str``, ``bool``, ``X | None`` (and other
unions), ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict`` / ``dict[K, V]``, nested
dataclasses, and ``Any``. Anything else is only checked with ``isinstance`` when it is a class.

:func:`apply_overrides` is the mapping form: it refuses unknown keys (listing the valid ones),
checks each value, descends into nested dataclasses (``finetune: {steps: 50}``) and returns a
new instance.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import types
import typing
from typing import Any

import numpy as np

from memrl.errors import MemrlError


class ConfigError(MemrlError):
    """A configuration value of the wrong type or out of range.

    ``where`` names the configuration (``env config``, or ``FILE [env]`` once the loader knows the
    file); ``problem`` names the field, what was found and what is expected. :meth:`at` re-labels
    the error with a better ``where`` without repeating the old one.
    """

    def __init__(self, where: str, problem: str) -> None:
        # Both parts in ``args``, so the error survives pickling (SubprocVecEnv workers).
        super().__init__(where, problem)
        self.where = where
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"

    def at(self, where: str) -> "ConfigError":
        """The same problem, reported for ``where`` (e.g. the YAML file and section)."""
        return ConfigError(where, self.problem)


def read_yaml_file(path: Any) -> Any:
    """A config file's YAML content (``{}`` when empty); a missing file or bad YAML is one clear line."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise MemrlError(f"config file {p} not found")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MemrlError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every dataclass field of ``cls`` (cached: classes do not change)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def check_fields(obj: Any, where: str) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation, in place.

    Lossless coercions (see the module docstring) are written back; anything else raises a
    :class:`ConfigError` for ``where`` that names the field, the value found and the type expected.
    """
    for name, tp in field_types(type(obj)).items():
        value = getattr(obj, name)
        checked = check_value(value, tp, name, where)
        if checked is not value:
            object.__setattr__(obj, name, checked)


def apply_overrides(obj: Any, overrides: Any, name: str, where: str) -> Any:
    """A copy of the dataclass instance ``obj`` with the mapping ``overrides`` applied and checked.

    Unknown keys are refused with the valid ones listed; a mapping given for a field that holds a
    dataclass is applied to it recursively. ``name`` is the overrides' own name in messages
    (``eval_overrides``, ``reward``); errors of the rebuilt instance's own checks (its
    ``__post_init__``) are re-labelled for ``where`` with ``name`` in front.
    """
    if not isinstance(overrides, dict):
        raise ConfigError(where, f"{name!r} must be a mapping of {_keys(obj)}, got {_shown(overrides)}")
    types_ = field_types(type(obj))
    unknown = sorted(str(k) for k in overrides if k not in types_)
    if unknown:
        raise ConfigError(where, f"unknown key(s) {', '.join(unknown)} in {name!r}; valid: {', '.join(sorted(types_))}")
    changes = {}
    for key, value in overrides.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value, f"{name}.{key}", where)
        else:
            changes[key] = check_value(value, types_[key], f"{name}.{key}", where)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as exc:
        raise ConfigError(where, f"{name}: {exc.problem}") from None


def check_value(value: Any, tp: Any, name: str, where: str, shown: Any = None) -> Any:
    """``value`` checked against the annotation ``tp`` (and losslessly coerced); ``name`` is its field path.

    ``shown`` is the annotation a mismatch of ``value`` itself names (``X | None`` while ``X`` is
    checked); mismatches of items inside it name their own type.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if shown is not None:
        try:
            return check_value(value, tp, name, where)
        except _Mismatch as exc:
            if exc.name != name:
                raise
            raise _mismatch(value, shown, name, where) from None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's checks (items name their own type), the union's message
            return check_value(value, options[0], name, where, shown=tp)
        for option in options:
            try:
                return check_value(value, option, name, where)
            except ConfigError:
                continue
        raise _mismatch(value, tp, name, where)
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return value if type(value) is bool else bool(value)
        raise _mismatch(value, tp, name, where)
    if tp is int:  # numpy integers too (as Python ints); a bool is not a count
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return value if type(value) is int else int(value)
        raise _mismatch(value, tp, name, where)
    if tp is float:  # an integer is a number too: coerced, nothing is lost
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return value if type(value) is float else float(value)
        raise _mismatch(value, tp, name, where)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
            return os.fspath(value)
        raise _mismatch(value, tp, name, where)
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(value, tp, name, where)
        item = args[0] if args else Any
        checked = [check_value(v, item, f"{name}[{i}]", where) for i, v in enumerate(value)]
        return value if isinstance(value, list) and all(a is b for a, b in zip(checked, value)) else checked
    if tp is tuple or origin is tuple:
        return _check_tuple(value, tp, args, name, where)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(value, tp, name, where)
        if not args:
            return value
        kt, vt = args
        items = [(check_value(k, kt, f"{name} key", where), check_value(v, vt, f"{name}.{k}", where)) for k, v in value.items()]
        unchanged = all(ck is k and cv is v for (ck, cv), (k, v) in zip(items, value.items()))
        return value if unchanged else dict(items)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _mismatch(value, tp, name, where)
    return value  # an annotation this checker does not model (a TypeVar, a Literal, ...): trust it


def _check_tuple(value: Any, tp: Any, args: tuple, name: str, where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _mismatch(value, tp, name, where)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        item_types = [args[0]] * len(value)
    else:
        if len(value) != len(args):
            raise ConfigError(where, f"{name!r} must be {describe(tp)} ({len(args)} items), got {len(value)} items: {value!r}")
        item_types = list(args)
    checked = tuple(check_value(v, t, f"{name}[{i}]", where) for i, (v, t) in enumerate(zip(value, item_types)))
    return value if isinstance(value, tuple) and all(a is b for a, b in zip(checked, value)) else checked


# ------------------------------------------------------------------------------------- messages
_NOUNS = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping", list: "list", tuple: "list"}


def describe(tp: Any) -> str:
    """``tp`` in words, as a YAML author would write it: ``an integer``, ``a list of numbers``, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if tp is bool:
        return "true or false"
    if tp in (int, float, str, dict, list, tuple) or origin is dict:
        noun = _NOUNS.get(tp) or _NOUNS[origin]
        return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
    if origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        if not items:
            return "a list"
        if len(set(items)) == 1 and items[0] in _NOUNS:
            return f"a list of {_NOUNS[items[0]]}s"
        return f"a list of ({', '.join(describe(a) for a in items)})"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {_keys(tp)}"
    return f"a {getattr(tp, '__name__', str(tp))}"


def _keys(obj: Any) -> str:
    return "keys " + ", ".join(f.name for f in dataclasses.fields(obj))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for t in (bool, int, float, str, dict, list, tuple):
        if isinstance(value, t):
            noun = _NOUNS[t]
            return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return text if value is None else f"{text} ({_kind(value)})"


class _Mismatch(ConfigError):
    """The value at field path ``name`` has the wrong type (a union re-words it with its own type)."""

    def __init__(self, where: str, problem: str, name: str = "") -> None:
        super().__init__(where, problem)
        self.name = name


def _mismatch(value: Any, tp: Any, name: str, where: str) -> ConfigError:
    problem = f"{name!r} must be {describe(tp)}, got {_shown(value)}"
    base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    if isinstance(value, str) and base in (int, float) and _is_number(value):
        problem += "; write the number without quotes"
    elif isinstance(value, str) and (base in (list, tuple) or typing.get_origin(base) in (list, tuple)):
        problem += f"; write a list even for one item: [{value}]"
    return _Mismatch(where, problem, name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
