"""Read params.yaml into typed, frozen configs (one per section).

Every stage calls `load_params()` once in its `main()` and passes the typed sections to
its pure `run()`. params.yaml is the only home of the values: these dataclasses have no
defaults, and an unknown or a missing key anywhere is an error naming the dotted key
(models.config.from_dict). Ray workers receive the frozen `Params`, never a dict.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.workspace import DEFAULT_WORKSPACE
from models.config import CAERNetConfig, ConfigError, KostiConfig, RRLAConfig, from_dict, to_dict
from models.dagnet_config import DAGNetConfig
from models.sibnet_config import SIBNetConfig

DEFAULT_PARAMS = DEFAULT_WORKSPACE.params_file


@dataclass(frozen=True)
class DataConfig:
    kind: str
    root: str
    annotations: str | None
    val_fraction: float
    verify_images: bool


@dataclass(frozen=True)
class SynthConfig:
    out: str
    format: str
    images: int
    seed: int


@dataclass(frozen=True)
class DetectConfig:
    face_detector: str
    min_face_size: int
    face_threshold: float
    batch_size: int
    haar_min_neighbors: int
    ray_min_images: int


@dataclass(frozen=True)
class ObjectsConfig:
    boxes: str
    boxes_file: str | None
    detector: str
    weights: str | None
    allow_random_weights: bool
    score_threshold: float
    top_n: int
    image_size: int
    batch_size: int
    shard_size: int
    exclude_iou: float
    num_actors: int | None  # Ray Data actors; null = one per GPU, else one per CPU


@dataclass(frozen=True)
class EmbeddingsConfig:
    source: str
    glove_file: str | None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    optimizer: str  # sgd | adam | adamw
    lr: float
    backbone_lr: float | None  # the pretrained trunks' lr (model.backbone_parameters()); null: lr
    lr_steps: list[float]  # fractions of training at which every lr is multiplied by lr_gamma
    lr_gamma: float
    momentum: float
    weight_decay: float
    loss: str
    grad_clip_norm: float | None
    num_workers: int
    use_gpu: str | bool
    loader_workers: int
    max_failures: int
    frozen_backbone: bool  # backbone maps computed once (core/training/body_cache.py); only what follows trains
    precise_bn: bool  # re-estimate BatchNorm statistics on the training split after every epoch (loop.py)


@dataclass(frozen=True)
class ModelParams:
    """`model`: which model the pipeline trains, and every model family's config.

    Each family's section is read only when that family is trained (`model.name`, or a
    `compare.models` entry), so DVC reruns only the branches whose section changed.
    """

    name: str  # rrla | kosti | caernet | sibnet | dagnet (models/registry.py)
    rrla: RRLAConfig
    kosti: KostiConfig
    caernet: CAERNetConfig
    sibnet: SIBNetConfig
    dagnet: DAGNetConfig

    def family(self, name: str | None = None) -> Any:
        """The typed config of family `name` (default: `model.name`)."""
        name = name or self.name
        if not any(f.name == name for f in dataclasses.fields(self)) or name == "name":
            families = [f.name for f in dataclasses.fields(self) if f.name != "name"]
            raise ConfigError(f"unknown model {name!r} (model.name / compare.models): no params section "
                              f"model.{name}; models: {families}")
        return getattr(self, name)

    @property
    def config(self) -> Any:
        return self.family()


@dataclass(frozen=True)
class CompareConfig:
    models: list[str]  # the models `ctxemo compare` (dvc.yaml's compare matrix) trains and evaluates


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str  # "{model}" is replaced by the model's name: one registered model per model family
    min_improvement: float

    def name_for(self, model: str) -> str:
        """The registered model a model family's versions go to (e.g. ctxemo-kosti)."""
        return self.model_name.replace("{model}", model)


@dataclass(frozen=True)
class TuneConfig:
    """The Ray Tune sweep (pipelines/sweep/). `space` holds one search space per model family
    (`space.<model>`, the one of `model.name` is searched); each maps dotted params paths to a
    distribution, {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} |
    {randint: [lo, hi)}, and never repeats a default."""

    num_samples: int
    max_epochs: int  # per trial; replaces train.epochs inside the sweep
    grace_period: int  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int  # ASHA: keep the best 1/reduction_factor at each rung
    searcher: str  # optuna (TPE) | random
    frozen_backbone: bool  # fast path: backbone maps cached once, trials train the heads only
    cache_dtype: str  # float16 | float32: storage of the cached backbone maps
    cpus_per_trial: float
    gpus_per_trial: float  # e.g. 0.5: two trials share a GPU
    max_concurrent_trials: int | None  # null: as many as the cluster's CPUs/GPUs fit
    max_failures: int  # retries of a crashed trial from its last checkpoint
    space: dict[str, dict[str, Any]]  # model name -> {dotted path: distribution}


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataConfig
    synth: SynthConfig
    detect: DetectConfig
    objects: ObjectsConfig
    embeddings: EmbeddingsConfig
    model: ModelParams
    train: TrainConfig
    compare: CompareConfig
    registry: RegistryConfig
    tune: TuneConfig

    def for_model(self, name: str | None = None) -> Params:
        """These params with `model.name` = `name` and that family's `train` overrides applied.

        A model family's `train` section (e.g. Kosti's batch size 52, CAER-Net's SGD at 5e-3)
        replaces the matching `train.*` values: the training stage, the compare matrix and the
        sweep all train a model through this, so each trains the way its section says.
        """
        name = name or self.model.name
        overrides = dict(self.model.family(name).train or {})
        allowed = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ConfigError(f"model.{name}.train: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        train = dataclasses.replace(self.train, **overrides)
        check_schedule(train, f"train (with model.{name}.train)")
        return dataclasses.replace(self, model=dataclasses.replace(self.model, name=name), train=train)


OPTIMIZERS = ("sgd", "adam", "adamw")


def check_schedule(train: TrainConfig, where: str) -> None:
    """The optimiser and learning-rate settings a training run needs, checked before any work."""
    if train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"{where}: optimizer must be one of {list(OPTIMIZERS)}, got {train.optimizer!r}")
    for key in ("lr", "backbone_lr"):
        value = getattr(train, key)
        if value is None and key == "backbone_lr":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{where}: {key} must be a number > 0, got {value!r}")
    steps = train.lr_steps
    if (not isinstance(steps, (list, tuple)) or any(isinstance(f, bool) or not isinstance(f, (int, float))
                                                   or not 0 < f < 1 for f in steps)
            or list(steps) != sorted(steps)):
        raise ConfigError(f"{where}: lr_steps must be increasing fractions of training in (0, 1), e.g. "
                          f"[0.5, 0.75], got {steps!r}")
    if isinstance(train.lr_gamma, bool) or not isinstance(train.lr_gamma, (int, float)) or not 0 < train.lr_gamma <= 1:
        raise ConfigError(f"{where}: lr_gamma must be a number in (0, 1], got {train.lr_gamma!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.resolve()}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def params_from_dict(data: dict[str, Any]) -> Params:
    params = from_dict(Params, data)
    for name in (params.model.name, *params.compare.models):
        params.model.family(name)  # a name without a params section is an error here, before any work
        params.for_model(name)  # its train overrides name real train keys
    return params


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    return params_from_dict(read_yaml(path))


def params_to_dict(params: Params) -> dict[str, Any]:
    return to_dict(params)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-copy `data` with dotted-path overrides applied ({'model.rrla.boa.heads': 4}).

    Every path must already exist: a typo is an error, not a silently new key. The one
    exception is a model family's `train` overrides (`model.<name>.train.<key>`), a mapping
    that holds only what differs: there a new key is allowed when it names a train setting.
    """
    import copy

    out = copy.deepcopy(data)
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for dotted, value in overrides.items():
        node = out
        keys = dotted.split(".")
        for key in keys[:-1]:
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"override {dotted!r}: no section {key!r} in params")
            node = node[key]
        family_train = len(keys) == 4 and keys[0] == "model" and keys[2] == "train" and keys[3] in train_keys
        if not isinstance(node, dict) or (keys[-1] not in node and not family_train):
            raise ConfigError(f"override {dotted!r}: no key {keys[-1]!r} in params")
        node[keys[-1]] = value
    return out
