"""``--set KEY=VALUE``: command-line overrides of a configuration dataclass, checked like the YAML.

Every command that runs from a configuration dataclass (``memrl train``: :class:`TrainConfig`,
``memrl evaluate``: :class:`EvalConfig`, later ``memrl search``) takes the same form::

    --set env.method=lora ppo.learning_rate=1e-3 env.datasets=[inverted,thick] env.reward.lam=2

:func:`parse_sets` turns the items into one nested mapping (dotted keys nest; a value is read
with YAML, so ``1e-3``, ``true``, ``null``, ``[a, b]`` and ``{k: v}`` work, and an empty value
is ``null``); :func:`apply_sets` applies it to a configuration instance and returns a new one:

* a key must name a field of the dataclass it lands in; an unknown key is refused with the valid
  ones listed (``unknown key 'env.nope'; valid keys of env: cache, datasets, ...``);
* a value is checked against the field's annotation (:func:`memrl.utils.config.check_value`,
  the checker the YAML loaders use, with its lossless coercions), naming the full key:
  ``'train.total_timesteps' must be an integer, got 'abc' (a string)``;
* a mapping given for a dataclass field applies key by key (``finetune.steps=50`` keeps the
  other ``finetune`` fields); a mapping given for a mapping field merges into it;
* mapping fields with a known shape are checked against it (:func:`register_mapping_schema`):
  ``env.eval_overrides`` against :class:`EvalConfig` (and its ``finetune`` / ``reward``),
  ``env.reward`` against :class:`RewardConfig`, ``ppo`` against ``stable_baselines3.PPO``'s
  keyword arguments and their annotations;
* the rebuilt instances run their own value checks (``__post_init__``: ``horizon >= 1``, a known
  method, ...); their errors are re-labelled for the ``--set`` source.

Errors are :class:`~memrl.utils.config.ConfigError` (a :class:`~memrl.errors.MemrlError`): the
CLI prints one ``memrl: error:`` line and exits with status 2 before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from memrl.errors import MemrlError
from memrl.utils.config import ConfigError, check_value, field_types

__all__ = [
    "apply_sets",
    "flatten_sets",
    "merge_sets",
    "nest",
    "parse_sets",
    "parse_value",
    "register_mapping_schema",
    "MappingSchema",
    "DataclassSchema",
    "KeywordSchema",
]


# --------------------------------------------------------------------------------------- parsing
def _yaml_loader():  # noqa: ANN202
    """A safe YAML loader that also reads YAML 1.2 floats such as ``1e-3`` and ``5E4`` as numbers.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent (``1.0e-3``), so
    ``ppo.learning_rate=1e-3`` would otherwise arrive as the string ``'1e-3'``. The resolver
    table is copied (PyYAML's ``add_implicit_resolver`` would append to the lists it shares with
    ``SafeLoader``), so yaml.safe_load elsewhere is unchanged.
    """
    import yaml

    class _SetLoader(yaml.SafeLoader):
        pass

    _SetLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    pattern = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    _SetLoader.add_implicit_resolver("tag:yaml.org,2002:float", pattern, list("-+0123456789."))
    return _SetLoader


_LOADER = None


def parse_value(text: str, key: str = "", source: str = "--set") -> Any:
    """``text`` read as YAML (``1e-3`` is a number, an empty text is ``null``)."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader()
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise MemrlError(f"{source}: the value of {key!r} is not valid YAML ({text!r}: {first[:120]})") from None


def parse_sets(items: list[str] | tuple[str, ...] | None, source: str = "--set") -> dict:
    """``["a.b=1", "a.c=[x, y]", "d=true"]`` -> ``{"a": {"b": 1, "c": ["x", "y"]}, "d": True}``.

    Each item is ``KEY=VALUE`` (split at the first ``=``); ``KEY`` is dotted, with no empty part.
    The same key twice with different values, or a key that is both a value and a section
    (``a=1 a.b=2``), is refused.
    """
    nested: dict = {}
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise MemrlError(f"{source}: {item!r} is not KEY=VALUE (e.g. env.method=lora or train.total_timesteps=64)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise MemrlError(f"{source}: {item!r} has no key before '='; write KEY=VALUE (e.g. env.method=lora)")
        parts = key.split(".")
        if any(not p or p != p.strip() or " " in p for p in parts):
            raise MemrlError(f"{source}: {key!r} is not a dotted key (names joined by '.', no empty part or space), in {item!r}")
        value = parse_value(text.strip(), key, source)
        merge_sets(nested, nest({key: value}, drop_none=False), source)
    return nested


def nest(flat: dict[str, Any], drop_none: bool = True) -> dict:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``; with ``drop_none`` (the default)
    ``None`` values are left out, so optional command-line flags can be passed as they are."""
    out: dict = {}
    for key, value in flat.items():
        if value is None and drop_none:
            continue
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def merge_sets(into: dict, other: dict, source: str = "--set", _prefix: str = "") -> dict:
    """Merge the nested mapping ``other`` into ``into`` (in place, and returned).

    Mappings merge key by key; the same key with two different values, or a value where the
    other side has a section, is refused naming the key.
    """
    for key, value in other.items():
        path = f"{_prefix}{key}"
        if key not in into:
            into[key] = value
            continue
        old = into[key]
        if isinstance(old, dict) and isinstance(value, dict):
            merge_sets(old, value, source, f"{path}.")
        elif old != value or isinstance(old, bool) != isinstance(value, bool):
            raise MemrlError(f"{source}: {path!r} is given twice, as {_short(old)} and as {_short(value)}; give it once")
    return into


def flatten_sets(nested: dict, _prefix: str = "") -> dict[str, Any]:
    """The inverse of :func:`nest`: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for messages and checks)."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{_prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_sets(value, f"{path}."))
        else:
            out[path] = value
    return out


# --------------------------------------------------------------------------------------- schemas
class MappingSchema:
    """The shape of a mapping-typed field (e.g. ``EnvConfig.eval_overrides``), for checking ``--set`` keys."""

    def check(self, value: dict, path: str, source: str) -> dict:  # pragma: no cover - interface
        raise NotImplementedError


class DataclassSchema(MappingSchema):
    """A mapping that fills the dataclass ``cls`` (its keys are ``cls``'s fields)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def check(self, value: dict, path: str, source: str) -> dict:
        return _check_mapping(self.cls, value, path, source)


class KeywordSchema(MappingSchema):
    """A mapping of keyword arguments of a callable (``stable_baselines3.PPO``): known keys only,
    values checked against the parameter annotations this checker understands."""

    def __init__(self, what: str, params: Callable[[], dict[str, Any]], reserved: Callable[[], tuple[str, ...]] = tuple, note: str = "") -> None:
        self.what = what
        self._params = params
        self._reserved = reserved
        self.note = note

    def check(self, value: dict, path: str, source: str) -> dict:
        params = self._params()
        valid = ", ".join(sorted(params))
        reserved = sorted(str(k) for k in value if k in self._reserved())
        if reserved:
            keys = ", ".join(f"{path}.{k}" for k in reserved)
            raise ConfigError(source, f"{keys} cannot be set{': ' + self.note if self.note else ''}; valid keys of {path} ({self.what}): {valid}")
        unknown = sorted(str(k) for k in value if k not in params)
        if unknown:
            keys = ", ".join(repr(f"{path}.{k}") for k in unknown)
            raise ConfigError(source, f"unknown key {keys}; valid keys of {path} ({self.what}): {valid}")
        out = {}
        for key, v in value.items():
            tp = params[key]
            out[key] = v if tp is Any else check_value(_coerce(v, tp), tp, f"{path}.{key}", source)
        return out


_SCHEMAS: dict[tuple[type, str], MappingSchema] = {}


def register_mapping_schema(cls: type, field: str, schema: MappingSchema | type) -> None:
    """Declare the shape of ``cls.field`` (a mapping), e.g. ``(EnvConfig, "reward") -> RewardConfig``.

    Each config module registers its own mapping fields when it is imported (this module imports
    no config: layers import downward only).
    """
    _SCHEMAS[(cls, field)] = schema if isinstance(schema, MappingSchema) else DataclassSchema(schema)


def _schema(cls: type, field: str) -> MappingSchema | None:
    for klass in cls.__mro__:
        if (klass, field) in _SCHEMAS:
            return _SCHEMAS[(klass, field)]
    return None


def keyword_annotations(fn: Callable, names: list[str]) -> dict[str, Any]:
    """``{keyword: annotation to check}`` for ``names`` of ``fn``'s signature (``Any`` where the
    checker cannot model the annotation, e.g. a class)."""
    import inspect

    sig = inspect.signature(fn).parameters
    return {name: _checkable(sig[name].annotation) if name in sig else Any for name in names}


_SIMPLE = (int, float, bool, str, dict, list, tuple, type(None))


def _checkable(tp: Any) -> Any:
    """The part of an annotation a command-line value can satisfy: ``float | Callable`` -> ``float``
    (a schedule cannot be typed on a command line); ``Any`` for what the checker does not model."""
    if tp is _inspect_empty() or isinstance(tp, str):
        return Any
    if tp in _SIMPLE:
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (dict, list, tuple):
        return tp
    if origin in (typing.Union, types.UnionType):
        keep = [a for a in args if typing.get_origin(a) is not Callable and a is not Callable]
        checked = [_checkable(a) for a in keep]
        if not checked or any(a is Any for a in checked):
            return Any
        out = checked[0]
        for a in checked[1:]:
            out = typing.Union[out, a]
        return out
    return Any


def _inspect_empty() -> Any:
    import inspect

    return inspect.Parameter.empty


# --------------------------------------------------------------------------------------- applying
def apply_sets(config: Any, sets: dict, source: str = "--set", _prefix: str = "") -> Any:
    """A new instance of the dataclass ``config`` with the nested mapping ``sets`` applied and checked.

    ``sets`` is what :func:`parse_sets` returns. See the module docstring for the rules.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"apply_sets needs a dataclass instance, got {type(config).__name__}")
    if not sets:
        return config
    types_ = field_types(type(config))
    _refuse_unknown(types_, sets, _prefix, source)
    changes = {}
    for key, value in sets.items():
        path = f"{_prefix}{key}"
        current = getattr(config, key)
        tp = types_[key]
        schema = _schema(type(config), key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ConfigError(source, f"{path!r} is a section, not a value: set its keys as {path}.KEY=VALUE ({_valid(field_types(type(current)))})")
            changes[key] = apply_sets(current, value, source, f"{path}.")
        elif schema is not None:
            if not isinstance(value, dict):
                raise ConfigError(source, f"{path!r} must be a mapping (or set its keys as {path}.KEY=VALUE), got {_short(value)}")
            checked = schema.check(value, path, source)
            base = dict(current) if isinstance(current, dict) else {}
            changes[key] = _deep_merge(base, checked)
        elif isinstance(current, dict) and isinstance(value, dict):
            changes[key] = check_value(_deep_merge(dict(current), value), tp, path, source)
        else:
            changes[key] = check_value(_coerce(value, tp), tp, path, source)
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError as exc:
        where = _prefix.rstrip(".")
        raise ConfigError(source, f"{where}: {exc.problem}" if where else exc.problem) from None
    except MemrlError as exc:
        where = _prefix.rstrip(".")
        raise ConfigError(source, f"{where}: {exc}" if where else str(exc)) from None


def _check_mapping(cls: type, value: dict, path: str, source: str) -> dict:
    """``value`` (a mapping that will fill the dataclass ``cls``) checked key by key, coerced."""
    types_ = field_types(cls)
    _refuse_unknown(types_, value, f"{path}.", source)
    out = {}
    for key, v in value.items():
        tp = types_[key]
        sub = f"{path}.{key}"
        schema = _schema(cls, key)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if not isinstance(v, dict):
                raise ConfigError(source, f"{sub!r} is a section, not a value: set its keys as {sub}.KEY=VALUE ({_valid(field_types(tp))})")
            out[key] = _check_mapping(tp, v, sub, source)
        elif schema is not None:
            if not isinstance(v, dict):
                raise ConfigError(source, f"{sub!r} must be a mapping, got {_short(v)}")
            out[key] = schema.check(v, sub, source)
        else:
            out[key] = check_value(_coerce(v, tp), tp, sub, source)
    return out


def _refuse_unknown(types_: dict, sets: dict, prefix: str, source: str) -> None:
    unknown = sorted(str(k) for k in sets if k not in types_)
    if unknown:
        keys = ", ".join(repr(f"{prefix}{k}") for k in unknown)
        of = f" of {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(source, f"unknown key {keys}; valid keys{of}: {', '.join(sorted(types_))}")


def _valid(types_: dict) -> str:
    return "keys: " + ", ".join(sorted(types_))


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _accepts_float(tp: Any) -> bool:
    if tp is float:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts_float(a) for a in typing.get_args(tp))
    return False


def _coerce(value: Any, tp: Any) -> Any:
    """A number written as text (``'1e-3'``, as YAML 1.1 reads it) for a float field becomes the number;
    lists of floats likewise. Everything else is left to :func:`check_value`."""
    if isinstance(value, str) and _accepts_float(tp):
        try:
            return float(value)
        except ValueError:
            return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, list) and origin in (list, tuple) and args and args[0] is float:
        return [_coerce(v, float) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def add_set_argument(parser, help: str) -> None:  # noqa: ANN001, A002
    """The ``--set KEY=VALUE ...`` option, the same on every command that takes it."""
    parser.add_argument("--set", nargs="+", action="extend", default=None, metavar="KEY=VALUE", help=help)
