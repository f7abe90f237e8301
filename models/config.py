"""Typed, frozen configs built from plain dicts (the sections of params.yaml).

`from_dict` is strict both ways: an unknown key and a missing key are errors naming the
dotted key. The configs carry no defaults of their own: params.yaml is the one home of
every value, so deleting a line there stops a run instead of silently changing it.
`to_dict` is the inverse, so a config saved inside a checkpoint or an MLflow run rebuilds
the exact same object. Pure Python: no file I/O here; core/params.py reads the YAML.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
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
    missing = [f"{path}.{f.name}" if path else f.name for f in dataclasses.fields(cls) if f.name not in data]
    if missing:
        raise ConfigError(f"missing key(s) {missing}: every setting lives in params.yaml, none has a default "
                          "in code (add the key back; `git diff params.yaml` shows what was there)")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = data[f.name]
        tp = _unwrap_optional(hints[f.name])
        sub = f"{path}.{f.name}" if path else f.name
        if _is_dataclass_type(tp):
            value = from_dict(tp, value, sub)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


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
    name: str  # resnet50 (paper) | resnet18 | mobilenet_v2
    pretrained: bool  # ImageNet weights via torchvision enums (or `weights`)
    weights: str | None  # local state_dict file; wins over the enum
    input_size: int  # square body crop side in pixels (paper 224)


@dataclass(frozen=True)
class BPAConfig:
    enabled: bool
    hidden: int  # SE bottleneck width (see models/bpa.py for the paper reading)


@dataclass(frozen=True)
class BOAConfig:
    enabled: bool
    heads: int  # h in the paper
    dim: int  # d of eq. 3 (projection width)
    geometry: bool  # eq. 4 relative-geometry term
    max_objects: int | None  # read only the first N stored objects (None = all)
    geometry_dim: int  # width of the sin/cos box embedding E(g) (Relation Networks: 64)


@dataclass(frozen=True)
class ELDConfig:
    enabled: bool
    t: float  # co-occurrence threshold, eq. 6
    p: float  # re-weighting, eq. 7
    hidden: int  # width of the first GCN layer (d_z -> hidden -> 4096)
    scaled: bool  # scores / sqrt(4096): keeps SGD stable from scratch (models/eld.py)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backbone: BackboneConfig
    bpa: BPAConfig
    boa: BOAConfig
    eld: ELDConfig