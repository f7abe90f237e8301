"""EMOTIC-format writer of the generated demo data set: JPEGs, the official Annotations.mat,
the CSV layout, object_boxes.csv (also written for CAER-S), the rules and the ground truth.

Files (EMOTIC): images/<name>.jpg, Annotations.mat (official layout), annotations_{train,
val,test}.csv (the widely used CSV layout), object_boxes.csv (every object and person box,
as a detector would report them), synth_meta.json (rules and counts) and synth_truth.jsonl
(per person: cues, object influences, cluster logits: the ground truth of the rules).
Every file is byte-reproducible: the .mat header carries a fixed text instead of a creation
time, and JSON is written with sorted keys.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.io

from core.data.labels import EMOTIC_CATEGORIES
from core.synth.draw_objects import OBJECT_DRAWERS
from core.synth.rules import (
    ANNOTATORS,
    BODY_CUE_PROBS,
    BODY_EFFECTS,
    CLUSTER_BASE,
    CLUSTER_NAMES,
    CLUSTER_VAD,
    CLUSTERS,
    LABEL_NOISE,
    NEAR_GAP,
    NEAR_SOFTNESS,
    OBJECT_EFFECTS,
    OBJECT_KINDS,
    PERSON_KIND,
    SIZE_FACTOR_RANGE,
    SIZE_REFERENCE,
    SOCIAL_EFFECT,
    VAD_NOISE,
    Box,
    PersonLabels,
)
from core.synth.scenes import (
    AGE_PROBS,
    FREE_OBJECTS_PROBS,
    GENDER_PROBS,
    IMAGE_SIZE,
    NEAR_OBJECTS_PROBS,
    OBJECT_SAMPLING_WEIGHT,
    SPLIT_FRACTIONS,
    ObjectSpec,
    PersonSpec,
    SceneRecord,
    assign_splits,
    image_rngs,
    label_scene,
    sample_emotic_scene,
)

GENERATOR = "core.synth"                     # named in synth_meta.json
IMAGE_FOLDER = "images"
JPEG_QUALITY = 90
ORIGINAL_DATABASE = "synthetic"
OBJECT_BOX_COLUMNS = ["image_path", "x1", "y1", "x2", "y2", "label", "score"]


def _struct_array(records: Sequence[dict[str, Any]], fields: Sequence[str]) -> np.ndarray:
    """A 1xN MATLAB struct array (savemat writes a structured object array as one)."""
    arr = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        for f in fields:
            arr[0, i][f] = rec[f]
    return arr


def _cell_row(strings: Sequence[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


def _vad_struct(vads: Sequence[Sequence[int]]) -> np.ndarray:
    return _struct_array([{"valence": float(v[0]), "arousal": float(v[1]), "dominance": float(v[2])} for v in vads],
                         ("valence", "arousal", "dominance"))


TRAIN_PERSON_FIELDS = ("body_bbox", "annotations_categories", "annotations_continuous", "gender", "age")
EVAL_PERSON_FIELDS = ("body_bbox", "annotations_categories", "combined_categories", "annotations_continuous",
                      "combined_continuous", "gender", "age")
IMAGE_FIELDS = ("filename", "folder", "image_size", "original_database", "person")


def _mat_person(person: PersonSpec, labels: PersonLabels, split: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "body_bbox": np.asarray(person.box, dtype=np.float64).reshape(1, 4),
        "annotations_categories": _struct_array([{"categories": _cell_row(s)} for s in labels.annotators],
                                                ("categories",)),
        "annotations_continuous": _vad_struct(labels.annotator_vad),
        "gender": person.gender,
        "age": person.age,
    }
    if split != "train":
        rec["combined_categories"] = _cell_row(labels.combined)
        rec["combined_continuous"] = _vad_struct([labels.combined_vad])
    return rec


def mat_bytes(records_by_split: dict[str, list[SceneRecord]], seed: int) -> bytes:
    """Annotations.mat in the official EMOTIC layout (keys train/val/test), byte-reproducible."""
    width, height = IMAGE_SIZE
    content = {}
    for split, records in records_by_split.items():
        fields = TRAIN_PERSON_FIELDS if split == "train" else EVAL_PERSON_FIELDS
        images = []
        for rec in records:
            persons = [_mat_person(p, lab, split) for p, lab in zip(rec.persons, rec.labels)]
            images.append({
                "filename": rec.name,
                "folder": IMAGE_FOLDER,
                "image_size": _struct_array([{"n_col": float(width), "n_row": float(height)}], ("n_col", "n_row")),
                "original_database": _struct_array([{"name": ORIGINAL_DATABASE, "info": np.zeros((0, 0))}],
                                                   ("name", "info")),
                "person": _struct_array(persons, fields),
            })
        content[split] = _struct_array(images, IMAGE_FIELDS)
    buf = io.BytesIO()
    scipy.io.savemat(buf, content, format="5", long_field_names=False, do_compression=False)
    data = bytearray(buf.getvalue())
    # the 116-byte text header carries a creation time; a fixed text keeps the file reproducible
    header = f"MATLAB 5.0 MAT-file, Platform: posix, Created by: ctxemo synth (seed {seed})".encode("ascii")
    data[:116] = header.ljust(116, b" ")
    return bytes(data)


CSV_HEADER = ["Index", "Folder", "Filename", "Image Size", "BBox", "Categorical_Labels", "Continuous_Labels",
              "Gender", "Age"]


def csv_text(records: Sequence[SceneRecord], split: str) -> str:
    """The widely used CSV layout (one row per person; val/test carry the combined labels)."""
    width, height = IMAGE_SIZE
    buf = io.StringIO()
    writer = csv.writer(buf, dialect="excel")
    writer.writerow(CSV_HEADER)
    index = 0
    for rec in records:
        for person, labels in zip(rec.persons, rec.labels):
            cats = labels.annotators[0] if split == "train" else labels.combined
            vad = labels.annotator_vad[0] if split == "train" else labels.combined_vad
            writer.writerow([index, IMAGE_FOLDER, rec.name, str([width, height]), str(list(person.box)),
                             str(list(cats)), str(list(vad)), person.gender, person.age])
            index += 1
    return buf.getvalue()


def final_labels(labels: PersonLabels, split: str) -> list[str]:
    return labels.annotators[0] if split == "train" else labels.combined


def object_rows(image_path: str, objects: Sequence[ObjectSpec], persons: Sequence[tuple[Box, float]]) -> list[list]:
    """The object_boxes.csv rows of one image: its objects, then its people (kind "person")."""
    rows = [[image_path, *o.box, o.kind, f"{o.score:.3f}"] for o in objects]
    rows += [[image_path, *box, PERSON_KIND, f"{score:.3f}"] for box, score in persons]
    return rows


def write_object_boxes(path: Path, rows: Iterable[Sequence[Any]]) -> None:
    """object_boxes.csv (OBJECT_BOX_COLUMNS), the same layout for both formats."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(OBJECT_BOX_COLUMNS)
        writer.writerows(rows)


def _rules_meta() -> dict[str, Any]:
    return {
        "image_size": list(IMAGE_SIZE),
        "clusters": {c: {"members": CLUSTERS[c], "base_logit": CLUSTER_BASE[c], "vad": list(CLUSTER_VAD[c])}
                     for c in CLUSTER_NAMES},
        "body_cue_probabilities": BODY_CUE_PROBS,
        "body_effects": BODY_EFFECTS,
        "object_kinds": {k: {"effects": OBJECT_EFFECTS[k], "sampling_weight": OBJECT_SAMPLING_WEIGHT[k],
                             "aspect": OBJECT_DRAWERS[k][1]} for k in OBJECT_KINDS},
        "social_effect": SOCIAL_EFFECT,
        "influence": {
            "formula": "sigmoid((near_gap - gap/person_height)/softness) * clip(sqrt(area_o/area_p)/size_reference, *size_factor_range)",
            "near_gap": NEAR_GAP, "softness": NEAR_SOFTNESS, "size_reference": SIZE_REFERENCE,
            "size_factor_range": list(SIZE_FACTOR_RANGE),
        },
        "labels": {
            "cluster_activation": "Bernoulli(sigmoid(base + body effects + sum influence * object effects)); "
                                  "the highest-logit cluster when none fires",
            "annotator": "each member of each active cluster with its membership probability, plus label_noise "
                         "per other category",
            "label_noise": LABEL_NOISE, "annotators": ANNOTATORS,
            "combined": "categories named by a strict majority of annotators (most-voted when none)",
            "vad": "mean of active cluster prototypes + N(0, vad_noise) per annotator, rounded, clipped to 1..10",
            "vad_noise": VAD_NOISE,
        },
        "people": {"per_image": [1, 3], "age": AGE_PROBS, "gender": GENDER_PROBS,
                   "near_objects": list(NEAR_OBJECTS_PROBS), "free_objects": list(FREE_OBJECTS_PROBS)},
    }


def _truth_row(rec: SceneRecord, i: int) -> dict[str, Any]:
    person, labels = rec.persons[i], rec.labels[i]
    n_obj = len(rec.objects)
    context = [{"object": k if k < n_obj else None, "kind": kind, "influence": round(w, 5)}
               for k, (kind, w) in enumerate(rec.contexts[i]) if w >= 1e-3]
    return {
        "split": rec.split, "filename": rec.name, "person": i, "body_bbox": list(person.box),
        "cues": person.cues.as_dict(), "gender": person.gender, "age": person.age,
        "context": context, "cluster_logits": {c: round(v, 5) for c, v in rec.logits[i].items()},
        "active_clusters": labels.active, "annotators": labels.annotators,
        "labels": final_labels(labels, rec.split),
    }


def generate_emotic(root: Path, images: int, seed: int) -> dict[str, Any]:
    """Write an EMOTIC-format set of `images` images into the (empty) folder `root`; return its summary."""
    (root / IMAGE_FOLDER).mkdir()
    splits = assign_splits(images, seed)
    scene_rngs, label_rngs = image_rngs(seed, images)
    records: list[SceneRecord] = []
    box_rows: list[list] = []
    for i in range(images):
        name = f"synth_{i:05d}.jpg"
        image, rec = sample_emotic_scene(scene_rngs[i], name, i)
        rec.split = splits[i]
        label_scene(label_rngs[i], rec)
        image.save(root / IMAGE_FOLDER / name, format="JPEG", quality=JPEG_QUALITY)
        person_scores = [(p.box, round(float(scene_rngs[i].uniform(0.9, 0.999)), 3)) for p in rec.persons]
        box_rows += object_rows(f"{IMAGE_FOLDER}/{name}", rec.objects, person_scores)
        records.append(rec)

    by_split = {s: [r for r in records if r.split == s] for s in SPLIT_FRACTIONS}
    (root / "Annotations.mat").write_bytes(mat_bytes(by_split, seed))
    for split, recs in by_split.items():
        with (root / f"annotations_{split}.csv").open("w", newline="") as fh:
            fh.write(csv_text(recs, split))
    write_object_boxes(root / "object_boxes.csv", box_rows)
    with (root / "synth_truth.jsonl").open("w") as fh:
        for rec in records:
            for i in range(len(rec.persons)):
                fh.write(json.dumps(_truth_row(rec, i), sort_keys=True) + "\n")

    label_counts = Counter(c for r in records for lab in r.labels for c in final_labels(lab, r.split))
    summary: dict[str, Any] = {
        "format": "emotic", "seed": seed,
        "images": {s: len(by_split[s]) for s in SPLIT_FRACTIONS},
        "persons": {s: sum(len(r.persons) for r in by_split[s]) for s in SPLIT_FRACTIONS},
        "objects": {s: sum(len(r.objects) for r in by_split[s]) for s in SPLIT_FRACTIONS},
        "label_counts": {c: label_counts.get(c, 0) for c in EMOTIC_CATEGORIES},
        "object_kind_counts": dict(sorted(Counter(o.kind for r in records for o in r.objects).items())),
        "mean_labels_per_person": round(sum(label_counts.values()) / max(1, sum(len(r.persons) for r in records)), 3),
        "files": ["Annotations.mat", "annotations_test.csv", "annotations_train.csv", "annotations_val.csv",
                  "object_boxes.csv", "synth_meta.json", "synth_truth.jsonl"],
        "image_files": images,
    }
    meta = {"generator": GENERATOR, "format": "emotic", "seed": seed, "images_requested": images,
            "summary": summary, "categories": list(EMOTIC_CATEGORIES), "rules": _rules_meta()}
    (root / "synth_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return summary
