"""Which weights the object-feature extractor runs with, and loading them safely.

The order (see core/features/__init__.py): `objects.weights` (a local state_dict file), the
torchvision enum when its file is already in the torch hub cache, a seeded random init when
`objects.allow_random_weights` is true, otherwise a download whose failure says how to supply the
file. Every choice is recorded (`WeightsChoice`) in meta.json and in every shard fingerprint, so
inference can rebuild the very extractor a model's features came from (`weights_for_record`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from core.params import ObjectsConfig


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights the extractor runs with; recorded in meta.json and in every fingerprint."""

    source: str                  # file | torchvision | random
    name: str                    # file path, enum name, or "random"
    sha256: str | None = None
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torchvision_enum(cfg: ObjectsConfig):
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    if cfg.boxes == "detector":
        return FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    return ResNet50_Weights.IMAGENET1K_V1


def _enum_name(weights) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def cached_checkpoint(weights) -> Path:
    """Where torch.hub keeps the file of a torchvision weights enum (it may not exist)."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise UserError(f"objects.weights: cannot read {path} as a torch state_dict "
                        f"({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"objects.weights: {path} holds no state_dict (a mapping of parameter names to tensors)")
    return obj


def resolve_weights(cfg: ObjectsConfig, seed: int) -> tuple[WeightsChoice, dict[str, torch.Tensor] | None]:
    """Pick the weights (see the module docstring for the order); None state_dict = random init."""
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise UserError(f"objects.weights: {path} does not exist (expected a local state_dict file of "
                            f"{'fasterrcnn_resnet50_fpn' if cfg.boxes == 'detector' else 'resnet50'})")
        return WeightsChoice("file", str(path), _sha256(path)), _read_state_dict(path)
    weights = _torchvision_enum(cfg)
    cached = cached_checkpoint(weights)
    if cached.is_file():
        return (WeightsChoice("torchvision", _enum_name(weights), _sha256(cached)),
                weights.get_state_dict(progress=False))
    if cfg.allow_random_weights:
        return WeightsChoice("random", "random", seed=seed), None
    try:
        state_dict = weights.get_state_dict(progress=True)
    except Exception as exc:  # URLError offline, HTTPError, hash mismatch...
        raise UserError(
            f"objects: no weights for the feature extractor: downloading {_enum_name(weights)} failed "
            f"({type(exc).__name__}: {exc}). Put {cached.name} into {cached.parent}, or set objects.weights "
            f"to a local state_dict file, or (generated demo data only) set objects.allow_random_weights: true"
        ) from None
    return WeightsChoice("torchvision", _enum_name(weights), _sha256(cached) if cached.is_file() else None), state_dict


def weights_for_record(cfg: ObjectsConfig, seed: int, record: dict[str, Any] | None
                       ) -> tuple[WeightsChoice, dict[str, torch.Tensor] | None]:
    """The weights an objects run used, from the `weights` record of its meta.json.

    Inference must see the features a model was trained on, so a record naming a file or an enum
    is honoured (never downloaded) and its sha256 checked; without a record the stage's own order
    applies.
    """
    from torchvision.models import get_weight

    if record is None:
        return resolve_weights(cfg, seed)
    source = record.get("source")
    if source == "random":
        return WeightsChoice(**record), None
    if source == "file":
        choice, state_dict = resolve_weights(replace(cfg, weights=record["name"]), seed)
    elif source == "torchvision":
        cached = cached_checkpoint(get_weight(record["name"]))
        if not cached.is_file():
            raise UserError(f"the model's object features came from {record['name']}; its file {cached} is not "
                            "on this machine (copy it there; nothing is downloaded)")
        choice, state_dict = resolve_weights(replace(cfg, weights=None), seed)
    else:
        raise UserError(f"objects meta.json names unknown weights source {source!r}")
    if record.get("sha256") and choice.sha256 != record["sha256"]:
        raise UserError(f"object-feature weights {choice.name} differ from the ones the model was trained with "
                        f"(sha256 {choice.sha256} != {record['sha256']})")
    return choice, state_dict


def load_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str,
                 ignorable_missing: tuple[str, ...] = ()) -> None:
    """load_state_dict that turns any mismatch into a UserError naming the expected architecture."""
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"objects.weights: not a {what} state_dict: {str(exc).splitlines()[0]}") from None
    # Torchvision's pretrained detectors use FrozenBatchNorm2d (no num_batches_tracked buffer);
    # the module built here uses BatchNorm2d in eval mode, which computes the same thing.
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith(ignorable_missing)]
    if missing or unexpected:
        raise UserError(f"objects.weights: not a {what} state_dict: missing {missing[:4]}"
                        f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                        f"{'...' if len(unexpected) > 4 else ''}")
