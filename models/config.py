"""Typed, frozen configs built from plain dicts (the sections of params.yaml).

`from_dict` is strict both ways: an unknown key and a missing key are errors naming the
dotted key. The configs carry no defaults of their own: params.yaml is the one home of
every value, so deleting a line there stops a run instead of silently changing it.
`to_dict` is the inverse, so a config saved inside a checkpoint or an MLflow run rebuilds
the exact same object. Pure Python: no file I/O here; core/params.py reads the YAML.
"""
from __future__ import annotations

import dataclasses
import numbers
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
        elif typing.get_origin(tp) is dict and _is_dataclass_type(typing.get_args(tp)[1]):
            if not isinstance(value, dict):
                raise ConfigError(f"{sub}: expected a mapping, got {type(value).__name__}")
            item_type = typing.get_args(tp)[1]
            value = {key: from_dict(item_type, item, f"{sub}.{key}") for key, item in value.items()}
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


# --- input views ----------------------------------------------------------------------

# Named normalisations of pixel values in [0, 1]: (mean, std) per channel.
NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's pretrained backbones
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),                  # values stay in [0, 1]
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),             # values in [-1, 1] (SIB-Net)
}


@dataclass(frozen=True)
class ViewConfig:
    """One input view as params.yaml gives it: `{size: 128, norm: imagenet}`."""

    size: int  # side of the square the view is resized to
    norm: str  # a key of NORMALISATIONS


@dataclass(frozen=True)
class ViewSpec:
    """How the loader turns a pixel view into a tensor (core/data/views.py builds the pixels)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: int | None = None  # patches only: N of the N x N grid


def view_spec(name: str, cfg: ViewConfig, *, grid: int | None = None) -> ViewSpec:
    """The loader's spec of view `name` from its params (`grid`: the patches view's N)."""
    if cfg.norm not in NORMALISATIONS:
        raise ConfigError(f"view {name!r}: norm must be one of {sorted(NORMALISATIONS)}, got {cfg.norm!r}")
    if cfg.size < 8:
        raise ConfigError(f"view {name!r}: size must be at least 8 pixels, got {cfg.size}")
    mean, std = NORMALISATIONS[cfg.norm]
    return ViewSpec(size=int(cfg.size), mean=mean, std=std, grid=grid)


def view_specs(views: dict[str, ViewConfig], wanted: tuple[str, ...], *, section: str,
               grid: int | None = None) -> dict[str, ViewSpec]:
    """The specs of the pixel views in `wanted` (`objects` has none), each required in `views`."""
    missing = [name for name in wanted if name != "objects" and name not in views]
    if missing:
        raise ConfigError(f"{section}.views: no size/norm for view(s) {missing} the model reads")
    return {name: view_spec(name, views[name], grid=grid if name == "patches" else None)
            for name in wanted if name != "objects"}


def check_views(views: Any, required: tuple[str, ...], section: str) -> None:
    """A family's `views` params: exactly the views it may read, each with a known norm."""
    if not isinstance(views, dict):
        raise ConfigError(f"{section}.views: expected a mapping, got {type(views).__name__}")
    unknown = sorted(set(views) - set(required))
    if unknown:
        raise ConfigError(f"{section}.views: unknown view(s) {unknown}; this model reads {list(required)}")
    view_specs(views, required, section=section)


# --- the model section of params.yaml -------------------------------------------------
#
# `model.name` picks the model; `model.<name>` holds that family's config. Each family's
# config dataclass lives beside its network (models/kosti.py, models/caernet.py); the
# flagship's is here because its parts (backbones, BPA, BOA, ELD) share these classes.


@dataclass(frozen=True)
class BackboneConfig:
    name: str  # resnet50 (paper) | resnet18 | mobilenet_v2
    pretrained: bool  # ImageNet weights via torchvision enums (or `weights`)
    weights: str | None  # local state_dict file; wins over the enum


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
    t: float  # co-occurrence threshold (the text below eq. 6)
    p: float  # re-weighting, eq. 7
    hidden: int  # width of the first GCN layer (d_z -> hidden -> 4096)
    scaled: bool  # scores / sqrt(4096): keeps SGD stable from scratch (models/eld.py)
    propagation: str  # as_written (Â) | transposed (Âᵀ, as ML-GCN's code)
    activation: str  # between_layers (as ML-GCN's code) | every_layer (as eq. 6 writes)


@dataclass(frozen=True)
class RRLAConfig:
    """`model.rrla`: the flagship (models/rrla.py)."""

    person_view: str  # auto (face on single-label data, as the paper on CAER-S; else body) | body | face
    views: dict[str, ViewConfig]  # body and face: size and normalisation of the person crop
    backbone: BackboneConfig
    bpa: BPAConfig
    boa: BOAConfig
    eld: ELDConfig
    standardise_objects: bool  # object features standardised with train-split statistics (ours, not the paper's)
    train: dict[str, Any]  # train.* values this model trains with instead of the train section's

    def __post_init__(self) -> None:
        # both person views, whichever the data set makes it read (person_view: auto)
        check_views(self.views, ("body", "face"), "model.rrla")


@dataclass(frozen=True)
class KostiLossConfig:
    """`model.kosti.loss`: L = discrete_weight * L_disc + continuous_weight * L_cont (EMOTIC only)."""

    discrete_weights: str  # "dynamic" (per batch, as in the paper) | "static" (train-split label frequencies)
    c: float  # w_j = 1 / ln(c + p_j); c > 1 (paper 1.2)
    continuous: str  # "smooth_l1" | "margin_l2"
    margin: float  # smooth_l1: the L1/L2 switch point (beta); margin_l2: errors below it cost 0 (theta)
    discrete_weight: float
    continuous_weight: float


@dataclass(frozen=True)
class KostiConfig:
    """`model.kosti`: the two-stream baseline."""

    views: dict[str, ViewConfig]  # body (public code 128) and image (224): size, norm
    body_backbone: BackboneConfig  # ResNet-18 in the public code
    context_backbone: BackboneConfig  # ResNet-18 (Places365 weights) in the public code
    fusion_dim: int  # 256 in the public code
    dropout: float  # after the fusion layer (public code 0.5)
    loss: KostiLossConfig
    train: dict[str, Any]  # train.* overrides for this model (batch_size 52 etc.); not read by the model

    def __post_init__(self) -> None:
        check_views(self.views, ("body", "image"), "model.kosti")


CAERNET_SECTION = "model.caernet"
CAERNET_VIEWS = ("face", "image_face_masked")
CAERNET_ENCODER_DEPTH = 5  # conv layers per encoder (the paper's); the first four are followed by pooling
CAERNET_MIN_INPUT = 2 ** (CAERNET_ENCODER_DEPTH - 1)  # four 2x2 poolings leave at least one pixel


@dataclass(frozen=True)
class CAERNetConfig:
    """`model.caernet` (validated on construction: a bad value is a ConfigError naming its key)."""

    views: dict[str, ViewConfig]  # face (paper static model 224; video 96) and image_face_masked (224)
    channels: tuple[int, ...]  # the encoders' conv widths, paper (32, 64, 128, 256, 256)
    attention_hidden: int  # the attention inference module's first conv width (paper 128)
    fusion_hidden: int  # g_D / g_E hidden width (paper 128)
    classifier_hidden: int  # the classifier's hidden width (paper 128)
    dropout: float  # in the classifier (paper 0.5)
    train: dict[str, Any]  # train.* values this model trains with (paper: SGD lr 5e-3, batch 32)

    def __post_init__(self) -> None:
        _validate_caernet(self)


def _validate_caernet(cfg: CAERNetConfig) -> None:
    if not isinstance(cfg.views, dict):
        raise ConfigError(f"{CAERNET_SECTION}.views: expected a mapping, got {type(cfg.views).__name__}")
    unknown = sorted(set(cfg.views) - set(CAERNET_VIEWS))
    if unknown:
        raise ConfigError(f"{CAERNET_SECTION}.views: unknown view(s) {unknown}; this model reads {list(CAERNET_VIEWS)}")
    view_specs(cfg.views, CAERNET_VIEWS, section=CAERNET_SECTION)  # both present, known norms
    for name in CAERNET_VIEWS:
        if cfg.views[name].size < CAERNET_MIN_INPUT:
            raise ConfigError(f"{CAERNET_SECTION}.views.{name}.size must be at least {CAERNET_MIN_INPUT} (four 2x2 "
                              f"poolings), got {cfg.views[name].size}")
    channels = cfg.channels
    if (not isinstance(channels, (tuple, list)) or len(channels) != CAERNET_ENCODER_DEPTH
            or not all(_positive_int(c) for c in channels)):
        raise ConfigError(f"{CAERNET_SECTION}.channels must be {CAERNET_ENCODER_DEPTH} positive ints (the paper's depth: "
                          f"32, 64, 128, 256, 256), got {channels!r}")
    for key in ("attention_hidden", "fusion_hidden", "classifier_hidden"):
        if not _positive_int(getattr(cfg, key)):
            raise ConfigError(f"{CAERNET_SECTION}.{key} must be a positive int, got {getattr(cfg, key)!r}")
    dropout = cfg.dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{CAERNET_SECTION}.dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(cfg.train, dict):
        raise ConfigError(f"{CAERNET_SECTION}.train: expected a mapping, got {type(cfg.train).__name__}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
