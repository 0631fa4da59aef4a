"""``params.yaml`` sections -> strict dataclasses.

``params.yaml`` is the single source of parameters for the CLI, DVC and Prefect. Each
top-level section maps onto one dataclass; an unknown key or a value of the wrong type is
an error that names the section and key (a typo must never silently fall back to a default).

Each later stage registers its section with :func:`section`::

    @section("ingest")
    @dataclass
    class IngestParams: ...

    params = load_params("params.yaml")          # dict section -> dataclass instance
    params["ingest"].target_sr
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

SECTIONS: dict[str, type] = {}
DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params file or section is invalid (unknown key, wrong type, bad value)."""


def section(name: str):
    """Class decorator registering a dataclass as the schema of ``params.yaml`` section ``name``."""

    def register(cls: type[T]) -> type[T]:
        SECTIONS[name] = cls
        return cls

    return register


def _check(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check(value, arg, where)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ParamsError(f"{where}: {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ParamsError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_check(k, kt, where): _check(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ParamsError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ParamsError(f"{where}: unsupported annotation {tp}")  # pragma: no cover - schema bug


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ParamsError`."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {k: _check(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required field
        raise ParamsError(f"{where}: {e}") from e
    except ValueError as e:  # __post_init__ validation
        raise ParamsError(f"{where}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (for logging and hashing)."""
    return dataclasses.asdict(obj)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error if the file is missing or not a mapping."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return data


def load_section(name: str, path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Any:
    """Load one section of ``params.yaml`` into its registered dataclass.

    A section missing from the file gives the dataclass defaults. ``overrides`` (already
    parsed values, e.g. from CLI flags) are applied on top before validation.
    """
    _import_schemas()
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section {name!r}; known: {sorted(SECTIONS)}")
    data = dict(read_yaml(path).get(name) or {}) if Path(path).exists() else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(SECTIONS[name], data, f"{path}:{name}")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load and validate every section of a params file; unknown sections are an error."""
    _import_schemas()
    data = read_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    return {name: from_dict(cls, data.get(name) or {}, f"{path}:{name}") for name, cls in SECTIONS.items()}


def _import_schemas() -> None:
    """Import the modules that register sections (kept here so there is one list)."""
    import mert.ablation.params  # noqa: F401
    import mert.data.demo  # noqa: F401
    import mert.data.ingest  # noqa: F401
    import mert.probe.params  # noqa: F401
    import mert.teachers.config  # noqa: F401
    import mert.train.params  # noqa: F401
