"""Strict YAML configuration with command-line overrides (espnet2 style), built on dataclasses.

A config is a (nested) dataclass. ``parse_config(MyConfig, argv)`` understands:

* ``--config conf/x.yaml``: values from a YAML file; every key must be a field (a typo is an error naming the file, the
  key and the closest valid name);
* ``--section.key VALUE`` / ``--key VALUE`` (``-`` and ``_`` are interchangeable): overrides, applied after the file;
  values are parsed as YAML (``--optim.lr 1e-4``, ``--losses "[input_kl, cif]"``) and type-checked, except for a text
  field (``str``, ``str | None``, a ``Literal`` of strings), which takes the text as typed (``--separator $'\\n'``,
  ``--instruction yes``); ``null`` sets an optional text field to none;
* ``--section VALUE`` with a mapping sets several keys of a section at once; ``--print_config``: print the complete
  resolved config as YAML and exit (a starting point for a new config); ``--help``: every key, its default and the
  comment that documents it.

Sections. A dataclass-typed field is a section: a mapping given for it updates its keys. A field with
``metadata={"whole": True}`` is replaced instead (a fresh instance with the mapping's keys: e.g. the loss weights, where
a mapping names every loss of the run). An optional section (``X | None``) is null or an X; setting one of its keys
creates it. A top-level field with ``metadata={"base": (key, load)}`` starts from ``load(value of key)`` when that key
is set (and ``load`` does not return None), before the file and command-line values are applied (a training run's model
section starts from the config saved with its ``init_from`` model). A config class may define ``check_config(where)``
for checks the types cannot express; it runs after every value is applied. A class whose dataclass bases bring fields of
a library (transformers' ``PretrainedConfig``) names those bases in ``config_skip_fields``: their fields are not config
keys.

``save_config(cfg, path)`` writes the resolved config next to the model so a run can be reproduced exactly.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration mistake the user can fix; the message says where and how."""


def _fields(cls) -> dict[str, dataclasses.Field]:
    """The config keys of ``cls`` (less the fields of ``cls.config_skip_fields``), with their resolved types."""
    bases = getattr(cls, "config_skip_fields", ())
    skip = {f.name for base in bases for f in dataclasses.fields(base)}
    hints = _own_type_hints(cls, bases) if bases else typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            f.type = hints[f.name]
            out[f.name] = f
    return out


def _own_type_hints(cls, bases: tuple[type, ...]) -> dict[str, Any]:
    """The field types ``cls`` and its other bases declare (a library base's own hints may not even resolve)."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if any(issubclass(base, klass) for base in bases):
            continue
        namespace = vars(sys.modules[klass.__module__])
        for name, ann in inspect.get_annotations(klass).items():
            hints[name] = eval(ann, namespace, dict(vars(klass))) if isinstance(ann, str) else ann
    return hints


def field_names(cls) -> list[str]:
    return list(_fields(cls))


def _section(tp: Any) -> type | None:
    """The dataclass of a section field (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(classes) == 1 and dataclasses.is_dataclass(classes[0]):
            return classes[0]
    return None


def _settable(cls, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every key that can be set: leaves and sections, dotted, mapped to their fields."""
    keys = {}
    for name, f in _fields(cls).items():
        keys[f"{prefix}{name}"] = f
        sub = _section(f.type)
        if sub is not None:
            keys.update(_settable(sub, f"{prefix}{name}."))
    return keys


def flat_keys(cls, prefix: str = "") -> dict[str, Any]:
    """All dotted leaf keys of a config class mapped to their types (sections are expanded)."""
    return {k: f.type for k, f in _settable(cls, prefix).items() if _section(f.type) is None}


def unknown_key_error(key: str, valid: typing.Iterable[str], where: str) -> ConfigError:
    """The error for an unknown dotted key, naming the closest valid one: a key of the same section whose name is
    close, else any key whose last name is very close (a key given in the wrong section)."""
    valid = list(valid)
    parent, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == parent}
    close = [siblings[c] for c in difflib.get_close_matches(name, list(siblings), n=1, cutoff=0.6)]
    if not close:
        anywhere = {k.rpartition(".")[2]: k for k in valid}
        close = [anywhere[c] for c in difflib.get_close_matches(name, list(anywhere), n=1, cutoff=0.8)]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}. Run with --print_config to list every valid key.")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int->float, a mapping -> its dataclass), else raise
    a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key, where)
            except ConfigError as e:
                errors.append(e)
        # a mapping meant for a section: its own error (the key inside it) says more than "must be X | None"
        raise errors[0] if len(errors) == 1 and isinstance(value, dict) else bad
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
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            check_fields(value, where, f"{key}.")
            return value
        if not isinstance(value, dict):
            raise bad
        return update_from_dict(tp(), value, f"{where}: {key}")  # strictly, from its defaults
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise bad
    if tp in (int, float) and isinstance(value, bool):
        raise bad
    if tp is int and isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ConfigError(f"{where}: '{key}' = {value} is out of range (a 64-bit integer)")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad
    return value


def check_fields(cfg: Any, where: str, prefix: str = "") -> None:
    """Type-check every field of ``cfg`` in place (sub-configs and mappings for them included, converted as
    ``_check_type`` does), then run the class's ``check_config`` (sections first)."""
    for name, f in _fields(type(cfg)).items():
        setattr(cfg, name, _check_type(getattr(cfg, name), f.type, f"{prefix}{name}", where))
    check = getattr(cfg, "check_config", None)
    if callable(check):
        check(f"{where}: {prefix.rstrip('.')}" if prefix else where)


def _apply(cfg: Any, key: str, value: Any, where: str) -> None:
    settable = _settable(type(cfg))
    if key not in settable:
        raise unknown_key_error(key, [k for k, f in settable.items() if _section(f.type) is None], where)
    f = settable[key]
    *parents, leaf = key.split(".")
    obj = cfg
    for i, p in enumerate(parents):
        if getattr(obj, p) is None:  # an optional section that is off: setting one of its keys turns it on
            setattr(obj, p, _section(settable[".".join(parents[: i + 1])].type)())
        obj = getattr(obj, p)
    sub = _section(f.type)
    current = getattr(obj, leaf)
    if sub is not None and isinstance(value, dict) and current is not None and not f.metadata.get("whole"):
        for k, v in value.items():  # a mapping for a section updates its keys
            _apply(cfg, f"{key}.{k}", v, where)
        return
    setattr(obj, leaf, _check_type(value, f.type, key, where))


def update_from_dict(cfg: T, values: dict, where: str) -> T:
    """Apply a (nested) dict of values onto ``cfg`` in place, strictly (sections as the module docstring says)."""
    for key, value in values.items():
        _apply(cfg, str(key), value, where)
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start}: {e.object[e.start:e.start + 1]!r}); save it as "
                          "UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def to_dict(cfg: Any) -> Any:
    """A config (or any value in one) as plain dicts, lists and scalars."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {name: to_dict(getattr(cfg, name)) for name in _fields(type(cfg))}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")


def _build(cls: type[T], steps: list[typing.Callable[[Any], None]], where: str) -> T:
    """``cls()`` with ``steps`` applied; sections with a ``base`` start from it (see the module docstring)."""
    cfg = cls()
    for step in steps:
        step(cfg)
    bases = {}
    for name, f in _fields(cls).items():
        if "base" in f.metadata:
            key, load = f.metadata["base"]
            base = None if getattr(cfg, key) is None else load(getattr(cfg, key))
            if base is not None:  # (a loader returns None for a base that does not exist yet)
                bases[name] = base
    if bases:
        cfg = cls()
        for name, base in bases.items():
            setattr(cfg, name, base)
        for step in steps:
            step(cfg)
    check_fields(cfg, where)
    return cfg


def from_dict(cls: type[T], values: dict, where: str) -> T:
    return _build(cls, [lambda cfg: update_from_dict(cfg, values, where)], where)


def from_yaml_file(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, load_yaml(path), str(path))


def _is_text(tp: Any) -> bool:
    """A field whose command-line value is taken as typed: str, str | None, a Literal of strings."""
    if tp is str:
        return True
    if typing.get_origin(tp) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) == 1 and _is_text(args[0])
    return False


def _cli_value(raw: str, tp: Any) -> Any:
    if _is_text(tp):
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
        return None if optional and raw == "null" else raw
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _comments(cls) -> dict[str, str]:
    """field name -> the comment that documents it in the class source (the lines above it, or the one after it)."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    body = ast.parse(textwrap.dedent("".join(lines))).body[0].body
    docs = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, i = [], node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        after = lines[node.lineno - 1].split("  # ", 1)[1].strip() if "  # " in lines[node.lineno - 1] else ""
        text = " ".join(above) or after
        if text:
            docs[node.target.id] = text
    return docs


def _one_line(value: Any) -> str:
    if isinstance(value, str) and value and value.strip() == value and "\n" not in value and ": " not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _help_rows(cls, obj: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) of every key of ``cls``; ``obj``: an instance holding the defaults."""
    docs, rows = _comments(cls), []
    for name, f in _fields(cls).items():
        value, sub = getattr(obj, name), _section(f.type)
        if sub is None or value is None:
            rows.append((f"{prefix}{name}", _one_line(to_dict(value)), docs.get(name, "")))
        if sub is not None:
            rows += _help_rows(sub, sub() if value is None else value, f"{prefix}{name}.")
    return rows


def _print_help(cls, parser: argparse.ArgumentParser) -> None:
    parser.print_help()
    print("\nEvery key can be set in the YAML file or overridden as --key VALUE (default, then what it is):")
    for key, default, doc in _help_rows(cls, cls()):
        option = f"  --{key} {default}"
        print(f"{option:<48} {doc}".rstrip() if len(option) < 48 else f"{option}\n{'':<48} {doc}".rstrip())


def parse_config(
    cls: type[T], argv: list[str] | None = None, prog: str | None = None, description: str | None = None
) -> T:
    """Build ``cls`` from ``--config`` and ``--key value`` overrides (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False,
        exit_on_error=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="list every key with its default and exit")
    parser.add_argument("--config", type=str, default=None, help="YAML file with values for any key below")
    parser.add_argument("--print_config", "--print-config", action="store_true", help="print the full config and exit")
    try:
        known, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ConfigError(f"command line: {e}") from None
    if known.help:
        _print_help(cls, parser)
        sys.exit(0)
    settable = _settable(cls)
    steps = []
    if known.config:
        data = load_yaml(known.config)
        steps.append(lambda cfg: update_from_dict(cfg, data, known.config))
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
        value = _cli_value(raw, settable[key].type if key in settable else Any)
        steps.append(lambda cfg, key=key, value=value: _apply(cfg, key, value, "command line"))
    cfg = _build(cls, steps, known.config or "command line")
    if known.print_config:
        print(to_yaml(cfg), end="")
        sys.exit(0)
    return cfg
