"""Read params.yaml into typed, frozen configs (one per section).

Every stage calls `load_params()` once in its `main()` and passes the typed sections to
its pure `run()`. params.yaml is the only home of the values: these dataclasses have no
defaults, and an unknown or a missing key anywhere is an error naming the dotted key
(models.config.from_dict), as is a value of the wrong type or outside the range or choices
declared beside its field (`at_least`, `above`, `within`, `one_of`). Ray workers receive the
frozen `Params`, never a dict.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.workspace import DEFAULT_WORKSPACE
from models.benet_config import BENetConfig
from models.config import (
    CAERNetConfig,
    ConfigError,
    KostiConfig,
    RRLAConfig,
    above,
    at_least,
    check_field,
    from_dict,
    one_of,
    to_dict,
    within,
)
from models.dagnet_config import DAGNetConfig
from models.sibnet_config import SIBNetConfig

DEFAULT_PARAMS = DEFAULT_WORKSPACE.params_file

# Settings that change how fast a stage runs, not what it computes: dvc.yaml does not list them
# as params, so scaling actors or workers (or retrying more) makes nothing stale.
# tests/test_dvc_pipeline.py checks every other key of these sections is tracked.
SCHEDULING_KEYS = frozenset({
    "detect.batch_size", "detect.engine", "detect.ray_min_images", "detect.ray_min_cpus",
    "objects.num_actors", "objects.shard_size", "objects.engine", "objects.ray_min_images",
    "objects.ray_min_cpus", "objects.channels_last",
    "people.detect_batch_size",
    "train.num_workers", "train.use_gpu", "train.loader_workers", "train.max_failures", "train.cpus_per_worker",
    "train.channels_last",  # a memory layout: the same sums in another order, as another thread count gives
})

# The choices of string settings. The modules that act on them hold their own lists (they import
# torch, Ray or OpenCV, which loading params must not); tests/test_params_validation.py keeps both equal.
DATA_KINDS = ("emotic", "caers")
FACE_DETECTORS = ("mtcnn", "haar")  # core/detection/faces.py
OBJECT_BOXES = ("dataset", "detector")
OBJECT_DETECTORS = ("fasterrcnn_resnet50_fpn",)  # core/features/objects.py
STAGE_ENGINES = ("auto", "ray", "local")  # detect.engine, objects.engine: core/ray_utils.py choose_engine
PERSON_DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")  # core/detection/person_detector.py
EMBEDDING_SOURCES = ("glove6b50", "glove_file")  # core/graph/embeddings.py
OPTIMIZERS = ("sgd", "adam", "adamw")
TRAIN_LOSSES = ("weighted_mse", "bce", "focal", "cross_entropy")  # models/losses.py
PRECISIONS = ("fp32", "bf16")  # train.precision: core/training/loop.py
SEARCHERS = ("optuna", "random")  # pipelines/sweep/driver.py
CACHE_DTYPES = ("float16", "float32")  # core/training/body_cache.py
# Ray's FailureConfig: -1 retries without end, 0 never
MIN_MAX_FAILURES = -1


@dataclass(frozen=True)
class DataConfig:
    kind: str = one_of(*DATA_KINDS)
    root: str
    annotations: str | None
    val_fraction: float = within(0, 1, high_open=True)  # caers: the share of train carved out as val
    verify_images: bool


@dataclass(frozen=True)
class SynthConfig:
    out: str
    format: str = one_of(*DATA_KINDS)
    images: int = at_least(1)
    seed: int = at_least(0)


@dataclass(frozen=True)
class DetectConfig:
    face_detector: str = one_of(*FACE_DETECTORS)
    min_face_size: int = at_least(1)
    face_threshold: float = within(0, 1)  # a detector's confidence
    batch_size: int = at_least(1)
    haar_min_neighbors: int = at_least(0)
    engine: str = one_of(*STAGE_ENGINES)  # auto | ray | local (core/ray_utils.py choose_engine)
    ray_min_images: int = at_least(0)  # engine auto: splits with fewer images run in-process
    ray_min_cpus: int = at_least(1)  # engine auto: without a cluster, Ray Data from this many CPUs


@dataclass(frozen=True)
class ObjectsConfig:
    boxes: str = one_of(*OBJECT_BOXES)
    boxes_file: str | None
    detector: str = one_of(*OBJECT_DETECTORS)
    weights: str | None
    allow_random_weights: bool
    score_threshold: float = within(0, 1)
    top_n: int = at_least(1)
    image_size: int = at_least(1)
    shard_size: int = at_least(1)  # images a worker computes and writes in one go; a rerun resumes by shard
    exclude_iou: float = within(0, 1, low_open=True)  # IoU 0 would exclude every box
    num_actors: int | None = at_least(1)  # Ray Data actors; null = one per GPU, else one per CPU
    engine: str = one_of(*STAGE_ENGINES)  # auto | ray | local (core/features/execution.py choose_engine)
    ray_min_images: int = at_least(0)  # engine auto: fewer images to compute run in-process
    ray_min_cpus: int = at_least(1)  # engine auto: without a cluster or a GPU, Ray Data from this many CPUs
    channels_last: bool  # the extractor's maps in NHWC layout: the same numbers to float rounding, faster on CPU


@dataclass(frozen=True)
class PeopleConfig:
    """`people`: the person detector trained on the train split's boxes (core/detection/person_detector.py)."""

    detector: str = one_of(*PERSON_DETECTORS)
    weights: str | None  # null: COCO enum if cached, else random init; or a local state_dict file
    epochs: int = at_least(1)
    batch_size: int = at_least(1)
    lr: float = above(0)
    weight_decay: float = at_least(0)
    hflip: bool
    min_size: int = at_least(1)
    max_size: int = at_least(1)
    rpn_proposals: int = at_least(1)
    rois_per_image: int = at_least(1)
    score_threshold: float = within(0, 1)
    max_detections: int = at_least(1)
    detect_batch_size: int = at_least(1)


@dataclass(frozen=True)
class EmbeddingsConfig:
    source: str = one_of(*EMBEDDING_SOURCES)
    glove_file: str | None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = at_least(1)
    batch_size: int = at_least(1)
    optimizer: str = one_of(*OPTIMIZERS)
    lr: float = above(0)
    backbone_lr: float | None = above(0)  # the pretrained trunks' lr (model.backbone_parameters()); null: lr
    # fractions of training at which every lr is multiplied by lr_gamma (their order: check_schedule)
    lr_steps: list[float]
    lr_gamma: float = within(0, 1, low_open=True)
    momentum: float = within(0, 1, high_open=True)
    weight_decay: float = at_least(0)
    loss: str = one_of(*TRAIN_LOSSES)
    grad_clip_norm: float | None = above(0)
    num_workers: int = at_least(1)
    use_gpu: str | bool = one_of("auto", True, False)
    loader_workers: int = at_least(0)  # 0: batches loaded in the worker's own process
    # CPUs Ray reserves per training worker, its loader processes included (an autoscaler scales on
    # it); null: Ray's default of 1, and each worker's torch threads = its node's CPUs / workers there
    cpus_per_worker: int | None = at_least(1)
    max_failures: int = at_least(MIN_MAX_FAILURES)
    frozen_backbone: bool  # backbone maps computed once (core/training/body_cache.py); only what follows trains
    precise_bn: bool  # re-estimate BatchNorm statistics on the training split after every epoch (loop.py)
    precision: str = one_of(*PRECISIONS)  # bf16: training forward passes under torch.autocast (loop.py)
    channels_last: bool  # conv weights (and so activations) in NHWC: a layout, the same numbers to rounding


@dataclass(frozen=True)
class ModelParams:
    """`model`: which model the pipeline trains, and every model family's config.

    Each family's section is read only when that family is trained (`model.name`, or a
    `compare.models` entry), so DVC reruns only the branches whose section changed.
    """

    name: str  # rrla | kosti | caernet | sibnet | dagnet | benet (models/registry.py)
    rrla: RRLAConfig
    kosti: KostiConfig
    caernet: CAERNetConfig
    sibnet: SIBNetConfig
    dagnet: DAGNetConfig
    benet: BENetConfig

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
    min_improvement: float = at_least(0)

    def name_for(self, model: str) -> str:
        """The registered model a model family's versions go to (e.g. ctxemo-kosti)."""
        return self.model_name.replace("{model}", model)


@dataclass(frozen=True)
class TuneConfig:
    """The Ray Tune sweep (pipelines/sweep/). `space` holds one search space per model family
    (`space.<model>`, the one of `model.name` is searched); each maps dotted params paths to a
    distribution, {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} |
    {randint: [lo, hi)}, and never repeats a default."""

    num_samples: int = at_least(1)
    max_epochs: int = at_least(1)  # per trial; replaces train.epochs inside the sweep
    grace_period: int = at_least(1)  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = at_least(2)  # ASHA: keep the best 1/reduction_factor at each rung
    searcher: str = one_of(*SEARCHERS)  # optuna (TPE) | random
    frozen_backbone: bool  # fast path: backbone maps cached once, trials train the heads only
    cache_dtype: str = one_of(*CACHE_DTYPES)  # storage of the cached backbone maps
    cpus_per_trial: float = above(0)
    gpus_per_trial: float = at_least(0)  # e.g. 0.5: two trials share a GPU
    max_concurrent_trials: int | None = at_least(1)  # null: as many as the cluster fits; the rest wait (autoscaler demand)
    max_failures: int = at_least(MIN_MAX_FAILURES)  # retries of a crashed trial from its last checkpoint
    space: dict[str, dict[str, Any]]  # model name -> {dotted path: distribution}


@dataclass(frozen=True)
class Params:
    seed: int = at_least(0)  # numpy's generators refuse a negative seed
    data: DataConfig
    synth: SynthConfig
    detect: DetectConfig
    objects: ObjectsConfig
    people: PeopleConfig
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
        for key, value in overrides.items():  # the same rules as the train section's own values
            check_field(TrainConfig, key, value, f"model.{name}.train.{key}")
        train = dataclasses.replace(self.train, **overrides)
        check_schedule(train, f"train (with model.{name}.train)")
        return dataclasses.replace(self, model=dataclasses.replace(self.model, name=name), train=train)


def check_schedule(train: TrainConfig, where: str) -> None:
    """What the field rules cannot say of the lr schedule: its steps as increasing fractions."""
    steps = train.lr_steps
    if any(not 0 < f < 1 for f in steps) or list(steps) != sorted(steps):
        raise ConfigError(f"{where}: lr_steps must be increasing fractions of training in (0, 1), e.g. "
                          f"[0.5, 0.75], got {steps!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.resolve()}")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line, `file:line:column: what`, the way compilers say it (PyYAML counts from 0)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context else problem
    return f"{where}: invalid YAML: {' '.join(text.split())}"


def params_from_dict(data: dict[str, Any]) -> Params:
    params = from_dict(Params, data)
    for name in (params.model.name, *params.compare.models):
        params.model.family(name)  # a name without a params section is an error here, before any work
        params.for_model(name)  # its train overrides name real train keys, each with a valid value
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
