"""Strict YAML configuration with command-line overrides (espnet2 style), built on dataclasses.

A config is a (nested) dataclass. ``parse_config(MyConfig, argv)`` understands:

* ``--config conf/x.yaml``: values from a YAML file; every key must be a field (a typo is an error naming the file, the
  key and the closest valid name);
* ``--section.key VALUE`` / ``--key VALUE`` (``-`` and ``_`` are interchangeable): overrides, applied after the file;
  values are parsed as YAML (``--optim.lr 1e-4``, ``--losses "[input_kl, cif]"``) and type-checked;
* ``--print_config``: print the complete resolved config as YAML and exit (a starting point for a new config).

``save_config(cfg, path)`` writes the resolved config next to the model so a run can be reproduced exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration mistake the user can fix; the message says where and how."""


def _fields(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def flat_keys(cls, prefix: str = "") -> dict[str, Any]:
    """All dotted leaf keys of a config class mapped to their types (nested dataclasses are expanded)."""
    keys = {}
    for name, f in _fields(cls).items():
        if dataclasses.is_dataclass(f.type):
            keys.update(flat_keys(f.type, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = f.type
    return keys


def _unknown(key: str, valid: typing.Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}. Run with --print_config to list every valid key.")


def _check_type(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int->float), else raise a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}: '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key, where)
            except ConfigError:
                pass
        raise bad
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        return [_check_type(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = args if args else (Any, Any)
        return {_check_type(k, kt, key, where): _check_type(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and not isinstance(value, tp):
        # A dataclass inside a list/dict (e.g. data.train: [{path: ..., weight: ...}]) is built strictly from its dict.
        if not isinstance(value, dict):
            raise bad
        return update_from_dict(tp(), value, f"{where}: {key}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise bad
    if tp is int and isinstance(value, bool):
        raise bad
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad
    return value


def _apply(cfg: Any, key: str, value: Any, where: str) -> None:
    valid = flat_keys(type(cfg))
    if key not in valid:
        raise _unknown(key, valid, where)
    *parents, leaf = key.split(".")
    obj = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, _check_type(value, valid[key], key, where))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.startswith("_"):
            out.update({f"{prefix}{k}.{kk}": vv for kk, vv in _flatten(v).items()} if v else {f"{prefix}{k}": v})
        else:
            out[f"{prefix}{k}"] = v
    return out


def update_from_dict(cfg: T, values: dict, where: str) -> T:
    """Apply a (nested) dict of values onto ``cfg`` in place, strictly. Dict-typed leaves are taken whole."""
    valid = flat_keys(type(cfg))
    for key, value in values.items():
        if key in valid:
            _apply(cfg, key, value, where)
        elif isinstance(value, dict):
            update_from_dict(cfg, {f"{key}.{k}": v for k, v in value.items()}, where)
        else:
            raise _unknown(key, valid, where)
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")


def from_yaml_file(cls: type[T], path: str | Path) -> T:
    return update_from_dict(cls(), load_yaml(path), str(path))


def parse_config(
    cls: type[T], argv: list[str] | None = None, prog: str | None = None, description: str | None = None
) -> T:
    """Build ``cls`` from ``--config`` and ``--key value`` overrides (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--config", type=str, default=None, help="YAML file with values for any key below")
    parser.add_argument("--print_config", "--print-config", action="store_true", help="print the full config and exit")
    known, rest = parser.parse_known_args(argv)
    keys = flat_keys(cls)
    if known.help:
        parser.print_help()
        print("\nEvery key can be set in the YAML file or overridden as --key VALUE (defaults shown):")
        defaults = _flatten(to_dict(cls()))
        for key in keys:
            print(f"  --{key} {yaml.safe_dump(defaults.get(key), default_flow_style=True).strip().removesuffix('...')}")
        sys.exit(0)
    cfg = cls()
    if known.config:
        update_from_dict(cfg, load_yaml(known.config), known.config)
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument '{arg}' (options look like --key value)")
        if "=" in arg:
            name, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"command line: option '{arg}' needs a value")
            name, raw = arg[2:], rest[i + 1]
            i += 2
        key = name.replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float, bool)) and keys.get(key) is str:
            value = raw  # "--tag 001" stays the string the user typed
        _apply(cfg, key, value, "command line")
    if known.print_config:
        print(to_yaml(cfg), end="")
        sys.exit(0)
    return cfg
