"""Read params.yaml into typed, frozen configs (one per section).

Every stage calls `load_params()` once in its `main()` and passes the typed sections to
its pure `run()`. Unknown keys anywhere are an error (models.config.from_dict).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.config import ConfigError, ModelConfig, from_dict, to_dict

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class DataConfig:
    kind: str = "emotic"
    root: str = "data/raw/demo"
    annotations: str | None = "Annotations.mat"
    val_fraction: float = 0.1
    verify_images: bool = True


@dataclass(frozen=True)
class SynthConfig:
    out: str = "data/raw/demo"
    format: str = "emotic"
    images: int = 240
    seed: int = 0


@dataclass(frozen=True)
class DetectConfig:
    face_detector: str = "mtcnn"
    min_face_size: int = 20
    face_threshold: float = 0.9
    batch_size: int = 16
    haar_min_neighbors: int = 5
    ray_min_images: int = 100


@dataclass(frozen=True)
class ObjectsConfig:
    boxes: str = "dataset"
    boxes_file: str | None = "object_boxes.csv"
    detector: str = "fasterrcnn_resnet50_fpn"
    weights: str | None = None
    allow_random_weights: bool = False
    score_threshold: float = 0.3
    top_n: int = 10
    image_size: int = 320
    batch_size: int = 4
    shard_size: int = 64
    exclude_iou: float = 0.7
    num_actors: int | None = None     # Ray Data actors; null = one per GPU, else one per CPU


@dataclass(frozen=True)
class EmbeddingsConfig:
    source: str = "glove6b50"
    glove_file: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    loss: str = "weighted_mse"
    grad_clip_norm: float | None = 5.0
    num_workers: int = 1
    use_gpu: str | bool = "auto"
    loader_workers: int = 1
    max_failures: int = 2
    frozen_backbone: bool = False     # backbone maps computed once (stages/body_cache.py); only what follows trains


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "ctxemo-rrla"
    min_improvement: float = 0.005


@dataclass(frozen=True)
class TuneConfig:
    """The Ray Tune sweep (pipelines/sweep.py). `space` maps dotted params paths to a
    distribution, {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} |
    {randint: [lo, hi)}, and never repeats a default."""

    num_samples: int = 16
    max_epochs: int = 8               # per trial; replaces train.epochs inside the sweep
    grace_period: int = 2             # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2         # ASHA: keep the best 1/reduction_factor at each rung
    searcher: str = "optuna"          # optuna (TPE) | random
    frozen_backbone: bool = True      # fast path: backbone maps cached once, trials train the heads only
    cache_dtype: str = "float16"      # float16 | float32: storage of the cached backbone maps
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0       # e.g. 0.5: two trials share a GPU
    max_concurrent_trials: int | None = None  # null: as many as the cluster's CPUs/GPUs fit
    max_failures: int = 0             # retries of a crashed trial from its last checkpoint
    space: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Params:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


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
    return from_dict(Params, data)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    return params_from_dict(read_yaml(path))


def params_to_dict(params: Params) -> dict[str, Any]:
    return to_dict(params)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-copy `data` with dotted-path overrides applied ({'model.boa.heads': 4}).

    Every path must already exist: a typo is an error, not a silently new key.
    """
    import copy

    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        keys = dotted.split(".")
        for key in keys[:-1]:
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"override {dotted!r}: no section {key!r} in params")
            node = node[key]
        if not isinstance(node, dict) or keys[-1] not in node:
            raise ConfigError(f"override {dotted!r}: no key {keys[-1]!r} in params")
        node[keys[-1]] = value
    return out
