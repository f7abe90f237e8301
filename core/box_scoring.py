"""Scores of a trained model for given person boxes in one image, built the way training built them.

`ctxemo predict` (pipelines/predict.py) and the detection-aware evaluation of `compare`
(core/evaluation/detection_aware.py) both score boxes nobody annotated: the people a detector found.
Both go through `BoxScorer`, so a detected box is scored by exactly the code a manifest person is:
- objects: `core.features.extractor.ObjectFeatureExtractor`, the objects stage's per-image path,
  rebuilt from its meta.json record; each box gets its own top-N objects, selected relative to that
  box (the person itself excluded by `objects.exclude_iou`), as the stage selects them;
- pixel views: `core.data.dataset.view_tensor` on the image `open_rgb` decodes, as PersonDataset;
- faces: the detect stage's face detector with the `detect` params the model was trained with, else
  the documented fallback box (core/data/views.py), said per person;
- scores: `core.inference.predict_loader`, the evaluation stage's scoring loop.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ScoredBoxes:
    scores: np.ndarray                   # [D,K] the model's outputs, as reports/metrics.json scores them
    attention: np.ndarray | None         # BOA's weights per person (rrla), else None
    continuous: np.ndarray | None        # [D,3] valence/arousal/dominance where the model predicts them
    faces: list[dict[str, Any] | None]   # per person {"box", "source"} when the model reads a face view
    context: Any                         # core.features.extractor.ImageObjects, or None
    objects_source: str                  # where the object boxes came from ("not read by this model")


class BoxScorer:
    """One trained model (a core.inference.ModelPackage) with its object extractor and face detector.

    `objects_meta`: the objects stage's meta.json record the model was trained on (needed when the
    model reads objects). `data_root`: the data set's folder, so that its images get their objects from
    the data set's boxes file as in training; None when the images are not the data set's own.
    """

    def __init__(self, package: Any, objects_meta: dict[str, Any] | None, data_root: Path | None):
        from core.features.extractor import ObjectFeatureExtractor
        from core.params import ObjectsConfig
        from models.config import from_dict

        self.package = package
        params = package.params
        self.objects = None
        if "objects" in package.model.views:
            cfg = from_dict(ObjectsConfig, params["objects"])
            self.objects = ObjectFeatureExtractor(cfg, int(params["seed"]), objects_meta, data_root=data_root)
        self._face_detector = None

    def score(self, image: Path, rgb: np.ndarray, boxes: Sequence[Sequence[float]],
              dataset_boxes: Any = None) -> ScoredBoxes:
        """Scores of `boxes` ([x1,y1,x2,y2] pixels, at least one) in `image`, whose decoded pixels are `rgb`."""
        import torch

        from core.data.dataset import FACE_VIEWS, boxes_in_view, open_rgb, view_tensor
        from core.inference import predict_loader

        # float32 like the manifest's person_box, so crops and geometry round exactly as in training
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).tolist()
        if not boxes:
            raise ValueError("BoxScorer.score needs at least one box")
        model = self.package.model
        # The item PersonDataset.__getitem__ builds, from the same pieces (core/data/dataset.py).
        batch: dict[str, Any] = {"index": torch.arange(len(boxes))}
        context, objects_source = None, "not read by this model"
        if self.objects is not None:
            context = self.objects.extract(rgb, boxes, image_path=Path(image), dataset_boxes=dataset_boxes)
            objects_source = context.source
            top_n = self.objects.top_n
            batch.update({  # stored float16 features, float32 boxes, the first `count` objects valid
                "obj_feats": torch.from_numpy(np.stack([p.features for p in context.people]).astype(np.float16)),
                "obj_boxes": torch.from_numpy(np.stack([p.boxes for p in context.people]).astype(np.float32)),
                "obj_mask": torch.from_numpy(np.stack([np.arange(top_n) < p.count for p in context.people])),
                "person_box": torch.tensor(np.asarray(boxes, dtype=np.float32)),
            })
        pixels = np.asarray(open_rgb(Path(image)))
        pixel_views = [name for name in model.views if name != "objects"]
        faces = self.faces(pixels, boxes) if FACE_VIEWS & set(pixel_views) else [None] * len(boxes)
        for name in pixel_views:
            batch[name] = torch.stack([
                view_tensor(name, pixels, model.view_specs[name], body_box=box,
                            face_box=None if faces[i] is None else faces[i]["box"], people_boxes=boxes)
                for i, box in enumerate(boxes)])
        if getattr(model, "box_view", None):  # the box in that view's pixels, as PersonDataset gives it
            batch["person_box"] = boxes_in_view(boxes, pixels.shape[:2], model.view_specs[model.box_view])
        _, scores, attention, continuous = predict_loader(model, [batch], with_attention=True, with_continuous=True)
        return ScoredBoxes(np.asarray(scores), attention, continuous, faces, context, objects_source)

    def faces(self, pixels: np.ndarray, boxes: list[list[float]]) -> list[dict[str, Any]]:
        """Each person's face box, as the detect stage finds it, else the documented fallback."""
        from core.data.views import face_box_or_fallback
        from core.detection.faces import WHOLE_FRAME_DATASETS, build_face_detector, faces_for_people
        from core.params import DetectConfig
        from models.config import from_dict

        params = self.package.params
        if self._face_detector is None:
            self._face_detector = build_face_detector(from_dict(DetectConfig, params["detect"]))
        whole_frame = params["data"]["kind"] in WHOLE_FRAME_DATASETS
        found = faces_for_people(pixels, boxes, self._face_detector, whole_frame=whole_frame)
        out = []
        for result, box in zip(found, boxes):
            face, fallback = face_box_or_fallback(result.face_box, box)
            out.append({"box": [round(v, 2) for v in face],
                        "source": "fallback: no face found, top of the person box" if fallback else "detected"})
        return out
