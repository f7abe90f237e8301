"""Typed, frozen configs built from plain dicts (the sections of params.yaml).

`from_dict` is strict both ways: an unknown key and a missing key are errors naming the
dotted key. The configs carry no defaults of their own: params.yaml is the one home of
every value, so deleting a line there stops a run instead of silently changing it.
`to_dict` is the inverse, so a config saved inside a checkpoint or an MLflow run rebuilds
the exact same object. Pure Python: no file I/O here; core/params.py reads the YAML.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
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
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields.

    Every leaf is checked against its field's type hint and `Allowed` rule first (`check_field`),
    so a bad value stops the load with one line naming its key, not a run somewhere later."""
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
        else:
            check_field(cls, f.name, value, sub)
            if typing.get_origin(tp) is tuple and isinstance(value, list):
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


# --- what a value may be -------------------------------------------------------------
#
# The one mechanism for types, ranges and choices: a field's type hint says its type, and
# `at_least`/`above`/`within`/`one_of` beside the field say the rest (stored in the field's
# metadata, so the dataclasses still have no defaults). `from_dict` checks both for every
# leaf; a list's rule holds for each of its items. Checks that relate two fields stay in the
# config's __post_init__.

ALLOWED = "allowed"  # the dataclasses.field metadata key of a field's rule


@dataclass(frozen=True)
class Allowed:
    """A field's rule beyond its type: bounds (each open or closed), a step, or a set of choices."""

    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    step: int | None
    choices: tuple[Any, ...] | None

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            # type too: YAML's true is no 1, and 1 is no 'auto'
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return self.step is None or value % self.step == 0

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of [{', '.join(_yaml_scalar(c) for c in self.choices)}]"
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {opening}{_num(self.low)}, {_num(self.high)}{closing}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return text + (f" and a multiple of {self.step}" if self.step else "")


def _rule(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
          step: int | None = None, choices: tuple[Any, ...] | None = None) -> Any:
    return dataclasses.field(metadata={ALLOWED: Allowed(low, high, low_open, high_open, step, choices)})


def at_least(low: float, *, step: int | None = None) -> Any:
    """A field whose value (each item of a list) is >= low (and a multiple of `step`)."""
    return _rule(low, step=step)


def above(low: float) -> Any:
    """A field whose value is > low."""
    return _rule(low, low_open=True)


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A field whose value (each item of a list) lies in [low, high]; either end may be open."""
    return _rule(low, high, low_open=low_open, high_open=high_open)


def one_of(*choices: Any) -> Any:
    """A field whose value is one of `choices`."""
    return _rule(choices=tuple(choices))


def check_field(cls: type, name: str, value: Any, key: str) -> None:
    """ConfigError naming `key`, `value` and what is allowed unless `value` fits field `name` of `cls`."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    check_value(value, typing.get_type_hints(cls)[name], field.metadata.get(ALLOWED), key)


def check_value(value: Any, tp: Any, allowed: Allowed | None, key: str) -> None:
    typed = _conforms(value, tp)
    items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    if typed and (allowed is None or all(allowed.admits(item) for item in items)):
        return
    # the type is news only for a scalar, or a container of the wrong kind
    same_kind = isinstance(value, (list, tuple, dict)) and _conforms(type(value)(), tp)
    got = repr(value) if typed or same_kind else f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"{key} must be {_describe(tp, allowed)}, got {got}{_hint(value)}")


def _conforms(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(k, args[0]) and _conforms(v, args[1])
                                               for k, v in value.items())
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:  # an int is a number too; nan and inf are no setting's value
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, tp)


_NOUNS = {int: ("an int", "ints"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans (true or false)")}


def _describe(tp: Any, allowed: Allowed | None, plural: bool = False) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = (allowed.describe() if allowed is not None and allowed.choices is not None
                else " or ".join(_describe(m, allowed, plural) for m in members))
        return text + (" or null" if len(members) < len(args) else "")
    if origin in (list, tuple):
        return "a list of " + _describe(args[0], allowed, plural=True)
    if origin is dict or _is_dataclass_type(tp):
        return "mappings" if plural else "a mapping"
    if allowed is not None and allowed.choices is not None:
        return ("items " if plural else "") + allowed.describe()
    noun = _NOUNS.get(tp, (f"a {getattr(tp, '__name__', tp)}", f"{getattr(tp, '__name__', tp)}s"))[plural]
    return noun if allowed is None else f"{noun} {allowed.describe()}"


def _hint(value: Any) -> str:
    # YAML 1.1 (PyYAML) reads 1e-3 as a string: only 1.0e-3 is a float
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value):
        mantissa, exponent = re.split("[eE]", value)
        return f"; YAML reads {value} as text: write {mantissa}.0e{exponent}"
    return ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


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

    size: int = at_least(8)  # side of the square the view is resized to
    norm: str = one_of(*NORMALISATIONS)


@dataclass(frozen=True)
class ViewSpec:
    """How the loader turns a pixel view into a tensor (core/data/views.py builds the pixels)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: int | None = None  # patches only: N of the N x N grid


def view_spec(name: str, cfg: ViewConfig, *, grid: int | None = None, section: str | None = None) -> ViewSpec:
    """The loader's spec of view `name` from its params (`grid`: the patches view's N)."""
    # params are checked on load; a ViewConfig built in code is checked here, by the same rules
    key = f"{section}.views.{name}" if section else f"views.{name}"
    for field in ("size", "norm"):
        check_field(ViewConfig, field, getattr(cfg, field), f"{key}.{field}")
    mean, std = NORMALISATIONS[cfg.norm]
    return ViewSpec(size=int(cfg.size), mean=mean, std=std, grid=grid)


def view_specs(views: dict[str, ViewConfig], wanted: tuple[str, ...], *, section: str,
               grid: int | None = None) -> dict[str, ViewSpec]:
    """The specs of the pixel views in `wanted` (`objects` has none), each required in `views`."""
    missing = [name for name in wanted if name != "objects" and name not in views]
    if missing:
        raise ConfigError(f"{section}.views: no size/norm for view(s) {missing} the model reads")
    return {name: view_spec(name, views[name], grid=grid if name == "patches" else None, section=section)
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


BACKBONES = ("resnet50", "resnet18", "mobilenet_v2")  # models/backbones.py builds them (resnet50: the paper's)
PERSON_VIEWS = ("auto", "body", "face")  # models/rrla.py reads them
ELD_PROPAGATIONS = ("as_written", "transposed")  # models/eld.py
ELD_ACTIVATIONS = ("between_layers", "every_layer")


@dataclass(frozen=True)
class BackboneConfig:
    name: str = one_of(*BACKBONES)
    pretrained: bool  # ImageNet weights via torchvision enums (or `weights`)
    weights: str | None  # local state_dict file; wins over the enum


@dataclass(frozen=True)
class BPAConfig:
    enabled: bool
    hidden: int = at_least(1)  # SE bottleneck width (see models/bpa.py for the paper reading)


@dataclass(frozen=True)
class BOAConfig:
    enabled: bool
    heads: int = at_least(1)  # h in the paper
    dim: int = at_least(1)  # d of eq. 3 (projection width)
    geometry: bool  # eq. 4 relative-geometry term
    max_objects: int | None = at_least(0)  # read only the first N stored objects (None = all)
    # width of the sin/cos box embedding E(g) (Relation Networks: 64): 8 features per frequency
    geometry_dim: int = at_least(8, step=8)
    # per-head value projection d_v (models/boa.py): each head's O_B^k projected 2048 -> d_v before W3
    # (h*d_v -> 2048), as Relation Networks do; null: eq. 5 as written, W3 over the h raw 2048-d O_B^k
    value_dim: int | None = at_least(1)


@dataclass(frozen=True)
class ELDConfig:
    enabled: bool
    t: float = within(0, 1)  # co-occurrence threshold on P(j | i) (the text below eq. 6)
    p: float = within(0, 1)  # re-weighting, eq. 7
    hidden: int = at_least(1)  # width of the first GCN layer (d_z -> hidden -> 4096)
    scaled: bool  # scores / sqrt(4096): keeps SGD stable from scratch (models/eld.py)
    propagation: str = one_of(*ELD_PROPAGATIONS)  # as_written (Â) | transposed (Âᵀ, as ML-GCN's code)
    activation: str = one_of(*ELD_ACTIVATIONS)  # between_layers (as ML-GCN's code) | every_layer (as eq. 6 writes)


@dataclass(frozen=True)
class RRLAConfig:
    """`model.rrla`: the flagship (models/rrla.py)."""

    person_view: str = one_of(*PERSON_VIEWS)  # auto (face on single-label data, as the paper on CAER-S; else body)
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

    # dynamic (per batch, as in the paper) | static (train-split label frequencies)
    discrete_weights: str = one_of("dynamic", "static")
    c: float = above(1)  # w_j = 1 / ln(c + p_j) > 0 for every p_j >= 0 (paper 1.2)
    continuous: str = one_of("smooth_l1", "margin_l2")
    margin: float = at_least(0)  # smooth_l1: the L1/L2 switch point (beta); margin_l2: errors below it cost 0 (theta)
    discrete_weight: float = at_least(0)
    continuous_weight: float = at_least(0)

    def __post_init__(self) -> None:
        # the two rules that tie fields together, here so that they stop the load, not a Ray worker
        key = "model.kosti.loss"
        if self.continuous == "smooth_l1" and self.margin == 0:
            raise ConfigError(f"{key}.margin must be > 0 with continuous: smooth_l1 (the Huber switch point), "
                              f"got {self.margin!r}")
        if self.discrete_weight == 0 and self.continuous_weight == 0:
            raise ConfigError(f"{key}.discrete_weight and {key}.continuous_weight are both 0: nothing to train")


@dataclass(frozen=True)
class KostiConfig:
    """`model.kosti`: the two-stream baseline."""

    views: dict[str, ViewConfig]  # body (public code 128) and image (224): size, norm
    body_backbone: BackboneConfig  # ResNet-18 in the public code
    context_backbone: BackboneConfig  # ResNet-18 (Places365 weights) in the public code
    fusion_dim: int = at_least(1)  # 256 in the public code
    dropout: float = within(0, 1, high_open=True)  # after the fusion layer (public code 0.5)
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
    """`model.caernet`: each value is checked on load (from_dict), its views and the rules that tie values
    together on construction; a bad one is a ConfigError naming its key."""

    views: dict[str, ViewConfig]  # face (paper static model 224; video 96) and image_face_masked (224)
    channels: tuple[int, ...] = at_least(1)  # the encoders' conv widths, paper (32, 64, 128, 256, 256)
    attention_hidden: int = at_least(1)  # the attention inference module's first conv width (paper 128)
    fusion_hidden: int = at_least(1)  # g_D / g_E hidden width (paper 128)
    classifier_hidden: int = at_least(1)  # the classifier's hidden width (paper 128)
    dropout: float = within(0, 1, high_open=True)  # in the classifier (paper 0.5)
    train: dict[str, Any]  # train.* values this model trains with (paper: SGD lr 5e-3, batch 32)

    def __post_init__(self) -> None:
        _validate_caernet(self)


def _validate_caernet(cfg: CAERNetConfig) -> None:
    # each value's type and range is checked on load (from_dict); here what ties values together
    check_views(cfg.views, CAERNET_VIEWS, CAERNET_SECTION)  # exactly these two, known norms
    for name in CAERNET_VIEWS:
        if cfg.views[name].size < CAERNET_MIN_INPUT:
            raise ConfigError(f"{CAERNET_SECTION}.views.{name}.size must be at least {CAERNET_MIN_INPUT} (four 2x2 "
                              f"poolings), got {cfg.views[name].size}")
    if len(cfg.channels) != CAERNET_ENCODER_DEPTH:
        raise ConfigError(f"{CAERNET_SECTION}.channels must be {CAERNET_ENCODER_DEPTH} ints >= 1 (the paper's depth: "
                          f"32, 64, 128, 256, 256), got {list(cfg.channels)!r}")
