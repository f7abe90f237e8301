"""A tiny, real pipeline workspace for tests: generated data through every data stage.

Built once per test session (about 20 s): synth -> ingest -> objects (dataset boxes, seeded
random extractor) -> detect (faces) -> people (a person detector, one epoch) -> cooccurrence ->
embeddings, with params.yaml shrunk so that a training epoch takes a second or two on one CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import REPO  # noqa: E402

from core.params import Params, params_from_dict, read_yaml

TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "synth": {"images": 16},
    "objects": {"top_n": 4, "image_size": 96, "shard_size": 8, "allow_random_weights": True},
    "people": {"epochs": 1, "batch_size": 4, "min_size": 64, "max_size": 96, "rpn_proposals": 50,
               "rois_per_image": 32},
    "model": {
        "rrla": {
            "views": {"body": {"size": 32, "norm": "imagenet"}, "face": {"size": 32, "norm": "imagenet"}},
            "backbone": {"name": "resnet18", "pretrained": False, "weights": None},
            "bpa": {"enabled": True, "hidden": 8},
            "boa": {"enabled": True, "heads": 2, "dim": 16, "geometry": True, "geometry_dim": 16,
                    "max_objects": None},
            "eld": {"enabled": True, "t": 0.2, "p": 0.2, "hidden": 32, "scaled": True,
                    "propagation": "as_written", "activation": "between_layers"},
        },
        "kosti": {"views": {"body": {"size": 32, "norm": "imagenet"}, "image": {"size": 32, "norm": "imagenet"}},
                  "fusion_dim": 16, "train": {"batch_size": 8, "optimizer": "adamw", "lr": 0.001}},
        "caernet": {"views": {"face": {"size": 32, "norm": "imagenet"},
                              "image_face_masked": {"size": 32, "norm": "imagenet"}},
                    "channels": [8, 8, 16, 16, 16], "attention_hidden": 8, "fusion_hidden": 8,
                    "classifier_hidden": 8, "train": {"batch_size": 8, "optimizer": "sgd", "lr": 0.005}},
        "sibnet": {"views": {name: {"size": 32, "norm": "symmetric"}
                             for name in ("image_face_masked", "image_body_masked", "image")},
                   "classifier_hidden": 16, "train": {"batch_size": 8}},
        "dagnet": {"views": {"body": {"size": 32, "norm": "imagenet"}, "image_body_masked": {"size": 32, "norm": "imagenet"},
                             "patches": {"size": 32, "norm": "imagenet"}},
                   "bam": {"hidden": 4}, "gsam": {"hidden": 16},
                   "lsam": {"n": 2, "channels": [8, 8], "node_pool": 2, "gcn_dims": [32, 32, 16], "fc_dim": 16},
                   "train": {"batch_size": 8}},
        "benet": {"views": {"image": {"size": 64, "norm": "imagenet"}}, "pyramid_channels": 8,
                  "dense": {"blocks": 1, "deconv_channels": 8, "deconv_kernel": 4},
                  "classifier": {"channels": [8, 8, 8, 8], "final_channels": 16, "hidden": None},
                  "decode": {"resolution": "both", "top_k": 5, "threshold": 0.0, "nms_kernel": 3},
                  "train": {"epochs": 2, "batch_size": 8}},
    },
    "train": {"epochs": 2, "batch_size": 8, "num_workers": 1, "loader_workers": 0, "use_gpu": False,
              "max_failures": 0},
}


def deep_update(base: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and value:
            deep_update(base[key], value)
        else:
            base[key] = value


def tiny_params_dict(root: Path, fmt: str = "emotic") -> dict[str, Any]:
    data = copy.deepcopy(read_yaml(REPO / "params.yaml"))
    for section, values in TINY_OVERRIDES.items():
        deep_update(data[section], copy.deepcopy(values))
    annotations = "Annotations.mat" if fmt == "emotic" else "face_boxes.txt"
    data["data"].update({"kind": fmt, "root": str(root / "raw"), "annotations": annotations, "val_fraction": 0.2})
    data["synth"].update({"out": str(root / "raw"), "format": fmt, "images": 16 if fmt == "emotic" else 28})
    return data


@dataclass(frozen=True)
class TinyWorkspace:
    root: Path
    params_dict: dict[str, Any]

    @property
    def params(self) -> Params:
        return params_from_dict(self.params_dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def train_paths(self, name: str = "run"):
        from core.workspace import Workspace

        run = self.root / name
        return Workspace.at(
            self.root, data_root=self.root / "raw", model_dir=run / "model", train_report_dir=run / "reports",
            thresholds_file=run / "thresholds.json", metrics_file=run / "metrics.json",
            details_file=run / "metrics_per_class.json", plots_dir=run / "plots", ray_storage=self.root / "ray_results",
        )


def build(root: Path, fmt: str = "emotic") -> TinyWorkspace:
    from core.data import ingest
    from core.detection import faces, person_detector
    from core.features import objects
    from core.graph import cooccurrence, embeddings
    from core.synth import generate

    params_dict = tiny_params_dict(root, fmt)
    params = params_from_dict(params_dict)
    generate(root / "raw", images=params.synth.images, seed=params.synth.seed, fmt=fmt)
    data = root / "data"
    ingest.run(params.data, params.seed, out_dir=data)
    objects.run(params, out_dir=data / "objects", manifest_dir=data / "manifest",
                shard_root=root / "object_shards", engine="local", log=lambda _: None)
    faces.run(params.detect, root / "raw", manifest_dir=data / "manifest", out_dir=data / "detections")
    person_detector.run(params.people, params.seed, root / "raw", manifest_dir=data / "manifest",
                        out_dir=data / "people", report_path=root / "reports" / "people.json", log=lambda _: None)
    cooccurrence.run(data / "manifest", data / "labels.json", data / "graph")
    embeddings.run(params.embeddings, data / "labels.json", data / "graph", seed=params.seed)
    return TinyWorkspace(root=root, params_dict=params_dict)
