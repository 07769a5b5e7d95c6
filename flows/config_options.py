"""Configs from outside: command-line options and JSON parameters in; the library's config dataclasses out.

In: a frozen config dataclass of the library (``IngestConfig``, ``MiningConfig``,
``WeightPolicy``, ``TrainConfig``, ``EvalConfig``), and either parsed command-line
arguments or a JSON dict (a flow's or a deployment's parameters). Out: one
command-line option per field, generated from the field's name, type, default and
the class docstring's ``Attributes:`` entry (:func:`add_config_options`), and the
config built from what was given (:func:`config_from_args`, :func:`build_config`).

So a field added to a config is an option of its command and a parameter of its flow
at once, documented where it is defined. A field's ``metadata`` may adjust its option:

* ``flag``: the option's name when it differs from ``--field-name`` (a boolean's flag
  always flips its default: ``dedup=True`` gives ``--no-dedup``);
* ``pairs``: a mapping field taken as repeated ``NAME=VALUE`` options;
* ``split``: a tuple field taken as one value per option, ``a,b,c`` (repeatable),
  instead of several values after one option;
* ``metavar``: the placeholder shown in ``--help``;
* ``zero_is_none``: an optional int where ``0`` means "no limit" (None).

An optional number whose default is not None (``MiningConfig.relative_margin``) also
takes the word ``none``, which sets it to None.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, get_args, get_origin

ConfigT = TypeVar("ConfigT")
_ATTRIBUTE_LINE = re.compile(r"^(\s+)(\w+):\s*(.*)$")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")
_UNSET = argparse.SUPPRESS  # options not given leave no attribute: only given ones override


def build_config(config_class: type[ConfigT], overrides: Mapping[str, Any] | None) -> ConfigT:
    """A library config from JSON-style overrides (a flow's parameters).

    Lists become tuples; a dict given for a field whose default is itself a dataclass
    (``IngestConfig.filters``) builds that dataclass the same way.

    Raises:
        ValueError: an override names no field of ``config_class``.
    """
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} option(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    values = {}
    for name, value in overrides.items():
        default = _default(fields[name])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(default):
            value = build_config(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return config_class(**values)


def attribute_docs(config_class: type) -> dict[str, str]:
    """Each field's description from the class docstring's ``Attributes:`` section, one line each."""
    docs: dict[str, str] = {}
    lines = (config_class.__doc__ or "").splitlines()
    inside = False
    current: str | None = None
    indent = 0
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if not line.strip():
            if docs:
                break  # the section ends at its first blank line
            continue
        match = _ATTRIBUTE_LINE.match(line)
        if match and (current is None or len(match.group(1)) <= indent):
            indent, current = len(match.group(1)), match.group(2)
            docs[current] = match.group(3).strip()
        elif current is not None:
            docs[current] += " " + line.strip()
    return docs


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    skip: tuple[str, ...] = (),
    title: str | None = None,
) -> None:
    """Add one option per field of ``config_class`` (nested dataclass fields flattened)."""
    group = parser.add_argument_group(title or f"{config_class.__name__} options") if title is not False else parser
    for field, path in _leaf_fields(config_class):
        if field.name in skip or path[0] in skip:
            continue
        _add_field_option(group, field, path, _hints(field.owner)[field.name], _docs(field.owner).get(field.name, ""))


def config_from_args(args: argparse.Namespace, config_class: type[ConfigT], base: Mapping[str, Any] | None = None) -> ConfigT:
    """The config that ``base`` overrides plus the options given on the command line describe.

    Raises:
        ValueError: a value that does not fit its field (the config's own checks).
    """
    overrides: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (base or {}).items()}
    for field, path in _leaf_fields(config_class):
        dest = _dest(path)
        if not hasattr(args, dest):
            continue
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = getattr(args, dest)
    return build_config(config_class, overrides)


# --- the generator -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Leaf:
    name: str
    owner: type
    field: dataclasses.Field

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.field.metadata


def _leaf_fields(config_class: type, prefix: tuple[str, ...] = ()) -> list[tuple[_Leaf, tuple[str, ...]]]:
    leaves = []
    for field in dataclasses.fields(config_class):
        default = _default(field)
        if dataclasses.is_dataclass(default):
            leaves += _leaf_fields(type(default), prefix + (field.name,))
        else:
            leaves.append((_Leaf(field.name, config_class, field), prefix + (field.name,)))
    return leaves


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


_HINTS: dict[type, dict[str, Any]] = {}
_DOCS: dict[type, dict[str, str]] = {}


def _hints(owner: type) -> dict[str, Any]:
    if owner not in _HINTS:
        _HINTS[owner] = typing.get_type_hints(owner)
    return _HINTS[owner]


def _docs(owner: type) -> dict[str, str]:
    if owner not in _DOCS:
        _DOCS[owner] = attribute_docs(owner)
    return _DOCS[owner]


def _dest(path: tuple[str, ...]) -> str:
    return "cfg__" + "__".join(path)


def _flag(leaf: _Leaf) -> list[str]:
    flag = leaf.metadata.get("flag")
    if flag:
        return list(flag) if isinstance(flag, (list, tuple)) else [flag]
    name = leaf.name.replace("_", "-")
    if _is_bool(_hints(leaf.owner)[leaf.name]) and _default(leaf.field) is True:
        return [f"--no-{name}"]
    return [f"--{name}"]


def _is_bool(hint: Any) -> bool:
    return hint is bool


def _optional_inner(hint: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(hint, False)``."""
    args = get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else hint), True
    return hint, False


def _describe_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _plain(doc: str) -> str:
    """A docstring fragment as help text: reST roles and literals unwrapped, ``%`` escaped."""
    return _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], doc).replace("``", "").replace("%", "%%").rstrip(".")


def _add_field_option(group: Any, leaf: _Leaf, path: tuple[str, ...], hint: Any, doc: str) -> None:
    default = _default(leaf.field)
    flags = _flag(leaf)
    dest = _dest(path)
    help_text = _plain(doc)
    common: dict[str, Any] = {"dest": dest, "default": _UNSET}
    if "metavar" in leaf.metadata:
        common["metavar"] = leaf.metadata["metavar"]
    if _is_bool(hint):
        shown = f"turn off: {help_text}" if default else f"{help_text} (default: off)"
        group.add_argument(*flags, action="store_const", const=not default, help=shown, dest=dest, default=_UNSET)
        return
    inner, optional = _optional_inner(hint)
    shown = f"{help_text} (default: {_describe_default(default)})".strip()
    origin = get_origin(inner)
    if leaf.metadata.get("pairs") or origin in (Mapping, dict, typing.Mapping) or inner in (Mapping, dict):
        value_type = (get_args(inner) or (str, str))[1]
        convert = value_type if value_type in (int, float) else str
        common.setdefault("metavar", "NAME=VALUE")
        group.add_argument(*flags, action=_PairsAction, help=shown, value_type=convert, **common)
        return
    if origin is tuple:
        item = get_args(inner)[0] if get_args(inner) else str
        split = leaf.metadata.get("split")
        common.setdefault("metavar", "VALUE")
        group.add_argument(
            *flags, action=_ExtendAction, nargs=None if split else "+", help=shown,
            item_type=item if item in (int, float) else str, split=split, **common,
        )  # fmt: skip
        return
    if origin is Literal:
        group.add_argument(*flags, choices=[str(c) for c in get_args(inner)], help=shown, **common)
        return
    kind = inner if inner in (int, float, str) else str
    if leaf.metadata.get("zero_is_none"):
        common.setdefault("metavar", "N")
        group.add_argument(*flags, type=_zero_is_none(kind), help=f"{shown}; 0: no limit", **common)
        return
    common.setdefault("metavar", kind.__name__.upper() if kind is not str else leaf.name.upper())
    if optional and default is not None and kind is not str:
        # an optional number that is on by default: the word "none" turns it off
        common["metavar"] += "|none"
        group.add_argument(*flags, type=_none_word(kind), help=f"{shown}; none: off", **common)
        return
    group.add_argument(*flags, type=kind, help=shown, **common)


def _none_word(kind: type) -> Any:
    def convert(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    convert.__name__ = kind.__name__
    return convert


def _zero_is_none(kind: type) -> Any:
    def convert(text: str) -> Any:
        value = kind(text)
        return None if value == 0 else value

    convert.__name__ = kind.__name__
    return convert


class _ExtendAction(argparse.Action):
    """Values of a tuple field: repeatable (``--x a --x b``) or several at once (``--x a b``)."""

    def __init__(self, *args: Any, item_type: type = str, split: str | None = None, **kwargs: Any) -> None:
        self.item_type = item_type
        self.split = split
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        items = list(getattr(namespace, self.dest, None) or ())
        for value in [values] if isinstance(values, str) else values:
            parts = [p.strip() for p in value.split(self.split)] if self.split else [value]
            try:
                items += [self.item_type(p) for p in parts if p]
            except ValueError:
                parser.error(f"{option}: {value!r} is not {_a_number(self.item_type)}")
        setattr(namespace, self.dest, tuple(items))


class _PairsAction(argparse.Action):
    """A mapping field as repeated ``NAME=VALUE`` options."""

    def __init__(self, *args: Any, value_type: type = str, **kwargs: Any) -> None:
        self.value_type = value_type
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        pairs = dict(getattr(namespace, self.dest, None) or {})
        name, sep, value = str(values).partition("=")
        if not sep or not name.strip():
            parser.error(f"{option} takes NAME=VALUE, got {values!r}")
        try:
            pairs[name.strip()] = self.value_type(value.strip())
        except ValueError:
            parser.error(f"{option}: the value of {name.strip()!r} must be {_a_number(self.value_type)}, got {value!r}")
        setattr(namespace, self.dest, pairs)


def _a_number(kind: type) -> str:
    return "an integer" if kind is int else "a number"
