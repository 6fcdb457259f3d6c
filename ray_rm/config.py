"""Load typed configs from YAML + dotted ``key=value`` overrides, and describe them for ``--help``.

What this module is for: turning text into a typed config, checking each key on its own (its type, and
its ``choices`` when the schema declares them), and printing ``--help``. What it must not do: hold a
default (they live only in the dataclasses: ``ray_rm.config_schema`` and the job sections) or a rule
between keys (those live in ``ray_rm/validation.py``). Unknown keys, wrong types and values outside a
key's choices raise ``ConfigError`` naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

from ray_rm.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config key is unknown, its value has the wrong type or is not one of its choices (the message names it)."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def choices_of(f: dataclasses.Field) -> tuple | None:
    """A field's allowed values: a tuple, or a registry's names resolved now (``config_schema.registered``)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _leaves(cls, prefix: str = "") -> Iterator[tuple[str, Any, Any, dataclasses.Field]]:
    hints = _field_types(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if _is_section(tp):
            yield from _leaves(tp, key + ".")
        else:
            yield key, tp, getattr(instance, f.name), f


def iter_keys(cls, prefix: str = "") -> Iterator[tuple[str, Any, Any, str]]:
    """Yield (dotted key, type, default, help) for every leaf setting of a config class."""
    for key, tp, default, f in _leaves(cls, prefix):
        yield key, tp, default, f.metadata.get("help", "")


def check_choice(key: str, value, f: dataclasses.Field) -> None:
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {' | '.join(map(str, choices))}, got {value!r}")


def check_choices(cfg, prefix: str = "") -> None:
    """Every key of a config instance against its choices (configs built in code never pass ``from_dict``)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        else:
            check_choice(f"{prefix}{f.name}", value, f)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp, value):
    """Check ``value`` against the annotated type; accept ints for floats and scalars for lists."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isnan(value):
                raise ConfigError(f"config key '{key}' expects a number, got NaN")
            return value
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if tp is list:
        if isinstance(value, str):
            return [v for v in (s.strip() for s in value.split(",")) if v]
        if isinstance(value, list):
            return list(value)
        raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def _unknown(key: str, cls, prefix: str) -> ConfigError:
    names = [f"{prefix}{k}" for k, *_ in iter_keys(cls)]
    full = f"{prefix}{key}"
    close = difflib.get_close_matches(full, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{full}'{hint}; run with --help to list all keys")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build ``cls`` from a nested mapping, validating every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = _field_types(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in by_name:
            raise _unknown(key, cls, prefix)
        tp = hints[key]
        if _is_section(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", tp, value)
            check_choice(f"{prefix}{key}", kwargs[key], by_name[key])
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, cls, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node, node_cls = tree, cls
    for i, part in enumerate(parts):
        hints = _field_types(node_cls)
        if part not in hints:
            raise _unknown_full(dotted, cls)
        tp = hints[part]
        if i == len(parts) - 1:
            if _is_section(tp):
                raise ConfigError(f"config key '{dotted}' is a section; set one of its keys, e.g. {dotted}.<key>=...")
            node[part] = _parse_scalar(raw)
        else:
            if not _is_section(tp):
                raise _unknown_full(dotted, cls)
            node = node.setdefault(part, {})
            node_cls = tp


def _unknown_full(dotted: str, cls) -> ConfigError:
    names = [k for k, *_ in iter_keys(cls)]
    close = difflib.get_close_matches(dotted, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{dotted}'{hint}; run with --help to list all keys")


def _parse_scalar(raw: str):
    """Parse a command-line value with YAML rules, so ``1e-5``, ``true`` and ``[a, b]`` mean what they say."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # yaml reads "1e-5" as a string (YAML 1.1); numbers are what users mean.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return "" if value is None else value


def load_config(cls: type[T], config_path: str | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + ``key=value`` overrides -> a validated ``cls`` instance."""
    tree: dict = {}
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file '{config_path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{config_path}' is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{config_path}' must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
        from_dict(cls, tree)  # validate the file's keys before merging overrides
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=1e-5)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, cls, key.strip(), raw)
    return absolute_local_paths(from_dict(cls, tree))


def absolute_local_paths(cfg):
    """``cfg`` with every ``local_path`` field's value (or list item) that names an existing local file or folder
    made absolute against this process's working directory; anything else (a hub id, ``builtin:...``,
    ``hf://...``, a glob) is kept as written.

    Why here, once, in the driver: Ray Train runs each worker in its run's own working directory (Ray's
    ``RAY_CHDIR_TO_TRIAL_DIR``), and other Ray workers need not share the driver's, so a path the user gave
    relative to where they started the job would not be found where it is opened."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            absolute_local_paths(value)
        elif f.metadata.get("local_path"):
            setattr(cfg, f.name, [_absolute(v) for v in value] if isinstance(value, list) else _absolute(value))
    return cfg


def _absolute(value):
    return str(Path(value).absolute()) if isinstance(value, str) and value and Path(value).exists() else value


def describe(cls) -> str:
    """Every key with its default and explanation (and its choices, unless the text names them all):
    the body of ``--help``."""
    rows = list(_leaves(cls))
    width = max(len(k) for k, *_ in rows)
    lines = []
    for key, tp, default, f in rows:
        shown = default if not isinstance(default, list) else ",".join(map(str, default))
        if isinstance(shown, str) and not shown.isprintable():  # e.g. a "\n" separator: shown escaped
            shown = repr(shown)
        help_text = f.metadata.get("help", "")
        choices = choices_of(f)
        if choices and not all(str(c) in help_text for c in choices):
            help_text += f" [one of: {', '.join(map(str, choices))}]"
        lines.append(f"  {key:<{width}}  {_type_name(tp):5} = {shown!s:<22} {help_text}")
    return "\n".join(lines)
