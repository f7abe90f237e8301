"""The image-level training set of models that learn from whole images (`model.trains_on == "images"`).

Why a second dataset: BENet (models/benet.py) learns from a whole image and all its people at once, each
image drawn for one of its heads by a pre-transformation (section 3.3, core/data/subject_transforms.py),
while every other model learns one annotated person per item (core/data/dataset.py `PersonDataset`).
Only training reads this set: validation, evaluation, thresholds, comparison and prediction stay per
annotated person (the person-level item gives such a model `person_box` in its view's pixels), so every
metric is computed as for the other models.

One item per image of the split's manifest (rows grouped by `image_path`, in order of first appearance):
    image       float32 [3,S,S]  the pre-transformed image resized and normalised as the model's `image`
                                 view (core/data/dataset.py `view_tensor`, the same code as every view)
    head        long []          the head the draw trains (models.benet_config.HEADS id)
    boxes       float32 [P,4]    the head's target boxes in the S x S input's pixels, zero rows past num_people
    labels      float32 [P,E]    their multi-hot labels (a single-label data set: one-hot rows), zero padded
    num_people  long []          the valid rows
    index       long []          the image's index
P is the most people of any image of the split, so every item of an epoch stacks into one batch.

Draws: the pre-transformation of image i in epoch e comes from numpy's Generator seeded with
(seed, e, i): a different draw each epoch, the same ones on a rerun, whichever loader process (or Ray
worker) decodes the item. The epoch travels with the index (`EpochSampler` yields (epoch, index) pairs)
because persistent DataLoader workers keep their own copy of the dataset and never see it change.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from core.data.dataset import multi_hot, open_rgb, view_tensor
from core.data.subject_transforms import SubjectPreTransforms, resize_boxes
from core.errors import UserError
from models.benet_config import HEADS
from models.config import ViewSpec

IMAGE_VIEW = "image"  # the view an image-level model reads its whole, pre-transformed image as


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def trains_on_images(model) -> bool:
    """Whether `model` (a registered model, possibly DDP-wrapped) trains on `ImageDataset` items."""
    return getattr(unwrap(model), "trains_on", "persons") == "images"


def group_by_image(image_paths: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """(the distinct image paths in order of first appearance, the manifest rows of each)."""
    rows: dict[str, list[int]] = {}
    for row, path in enumerate(image_paths):
        rows.setdefault(path, []).append(row)
    return list(rows), list(rows.values())


class ImageDataset(Dataset):
    """Whole images with all their people, each pre-transformed for one head (see the module docstring)."""

    draws_per_epoch = True  # core/training/loop.py then samples through `EpochSampler`
    face_fallbacks = 0  # reads no face view (the loop reports every training set's count)

    def __init__(self, manifest: pd.DataFrame, data_root: str | Path, *, num_classes: int, task: str,
                 view_spec: ViewSpec, pre_transforms: SubjectPreTransforms, seed: int):
        self.data_root, self.num_classes, self.task = Path(data_root), int(num_classes), task
        self.view_spec, self.pre_transforms, self.seed = view_spec, pre_transforms, int(seed)
        self.image_paths, self.rows = group_by_image(manifest["image_path"].tolist())
        self.person_boxes = np.stack(manifest["person_box"].map(np.asarray).tolist()).astype(np.float32).reshape(-1, 4)
        # multi-hot rows; a single-label data set's class id becomes a one-hot row (models/benet.py: same loss)
        self.person_labels = np.stack([multi_hot(labels[:1] if task == "multiclass" else labels, self.num_classes)
                                       for labels in manifest["labels"].map(list)]).astype(np.float32)
        self.max_people = max((len(rows) for rows in self.rows), default=0)
        if self.max_people == 0:
            raise UserError("the image-level dataset has no annotated person")

    def __len__(self) -> int:
        return len(self.image_paths)

    def draw_rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rows = self.rows[index]
        rgb = np.asarray(open_rgb(self.data_root / self.image_paths[index]))
        drawn = self.pre_transforms(rgb, self.person_boxes[rows], self.person_labels[rows],
                                    self.draw_rng(index, epoch))
        height, width = drawn.image.shape[:2]
        size = self.view_spec.size
        image = view_tensor(IMAGE_VIEW, drawn.image, self.view_spec, body_box=(0, 0, width, height), face_box=None)
        count = len(drawn.boxes)
        boxes = np.zeros((self.max_people, 4), np.float32)
        labels = np.zeros((self.max_people, self.num_classes), np.float32)
        boxes[:count] = resize_boxes(drawn.boxes, (height, width), (size, size))
        labels[:count] = drawn.labels
        return {"image": image, "head": torch.tensor(HEADS.index(drawn.head), dtype=torch.long),
                "boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                "num_people": torch.tensor(count, dtype=torch.long), "index": torch.tensor(index, dtype=torch.long)}


class EpochSampler(Sampler):
    """A sampler's indices as (epoch, index) pairs, the epoch set by `set_epoch` (DistributedSampler's)."""

    def __init__(self, sampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(index)) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def image_split_dataset(model, split: str, paths: Any, *, seed: int, manifest: pd.DataFrame | None = None
                        ) -> ImageDataset:
    """The ImageDataset of `split` for `model`: its `image` view's size and norm, its pre-transformations."""
    from core.data.manifest import read_manifest

    model = unwrap(model)
    if IMAGE_VIEW not in model.view_specs or not hasattr(model.config, "pre_transforms"):
        raise UserError(f"{getattr(model, 'family', 'the model')} trains on images but declares no "
                        f"'{IMAGE_VIEW}' view or pre_transforms")
    manifest = read_manifest(split, paths.manifest_dir) if manifest is None else manifest
    return ImageDataset(manifest, paths.data_root, num_classes=model.num_classes, task=model.task,
                        view_spec=model.view_specs[IMAGE_VIEW],
                        pre_transforms=SubjectPreTransforms.from_config(model.config.pre_transforms), seed=seed)
