"""Typed, frozen configs built from plain dicts (the sections of params.yaml).

`from_dict` is strict: an unknown key is an error, a missing key falls back to the
dataclass default (or is an error when there is none). `to_dict` is its inverse, so a
config saved inside a checkpoint or an MLflow run rebuilds the exact same object.
Pure Python: no file I/O here; stages/params.py reads the YAML.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A params section does not match its typed config."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp = _unwrap_optional(hints[f.name])
        sub = f"{path}.{f.name}" if path else f.name
        if _is_dataclass_type(tp) and value is not None:
            value = from_dict(tp, value, sub)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without default is missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a (nested) config dataclass; JSON/YAML serialisable."""
    out = dataclasses.asdict(cfg)
    return _lists(out)


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def replace_path(cfg: T, dotted: str, value: Any) -> T:
    """Return a copy of `cfg` with the field at `dotted` (e.g. 'boa.heads') set to `value`."""
    head, _, rest = dotted.partition(".")
    if not hasattr(cfg, head):
        raise ConfigError(f"{type(cfg).__name__} has no field {head!r}")
    if rest:
        return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


# --- the model section of params.yaml -------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet18"            # resnet50 (paper) | resnet18 | mobilenet_v2
    pretrained: bool = False          # ImageNet weights via torchvision enums (or `weights`)
    weights: str | None = None        # local state_dict file; wins over the enum
    input_size: int = 112             # square body crop side in pixels (paper 224)


@dataclass(frozen=True)
class BPAConfig:
    enabled: bool = True
    hidden: int = 32                  # SE bottleneck width (see models/bpa.py for the paper reading)


@dataclass(frozen=True)
class BOAConfig:
    enabled: bool = True
    heads: int = 16                   # h in the paper
    dim: int = 128                    # d of eq. 3 (projection width)
    geometry: bool = True             # eq. 4 relative-geometry term
    max_objects: int | None = None    # read only the first N stored objects (None = all)
    geometry_dim: int = 64            # width of the sin/cos box embedding E(g) (Relation Networks: 64)


@dataclass(frozen=True)
class ELDConfig:
    enabled: bool = True
    t: float = 0.2                    # co-occurrence threshold, eq. 6
    p: float = 0.2                    # re-weighting, eq. 7
    hidden: int = 2048                # width of the first GCN layer (d_z -> hidden -> 4096)
    scaled: bool = True               # scores / sqrt(4096): keeps SGD stable from scratch (models/eld.py)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "rrla"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    bpa: BPAConfig = field(default_factory=BPAConfig)
    boa: BOAConfig = field(default_factory=BOAConfig)
    eld: ELDConfig = field(default_factory=ELDConfig)
