"""What the report shows, read from the workspace and computed by running the model on the test split.

Pure helpers (`person_quality`, `choose_persons`, `pr_curves`, `top_objects`, `top_channels`) take
arrays and return plain values; `collect` reads the evaluation's files and scores the test split
through the evaluation's own `score_split`; `inspect_persons` runs the model once more on the
chosen persons with forward hooks (BPA gates through pipelines/diagnose.py's `recording_gates`,
the backbone's output map, the fused feature F that ELD reads). The rules are in the package
docstring (pipelines/report/__init__.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.workspace import Workspace

TOP_OBJECTS = 3
TOP_CHANNELS = 3
TOP_PREDICTIONS = 3  # at least; more when a person has more true labels
TABLE_FILES = {"compare": "compare.json", "ablations": "ablations*.json", "sweeps": "sweep*.json"}


# --------------------------------------------------------------------------- pure helpers


def person_quality(task: str, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """How well each person is predicted: [S], higher is better, NaN where undefined.

    Multi-label: the average precision of the person's own ranking of the classes against their
    true labels (sklearn's average_precision_score on the row; NaN without a true label).
    Single-label: the softmax probability the model gives the true class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if task == "multiclass":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities[np.arange(len(scores)), np.asarray(targets, dtype=np.int64)]
    from sklearn.metrics import average_precision_score

    targets = np.asarray(targets)
    return np.array([average_precision_score(t, s) if t.sum() > 0 else np.nan for t, s in zip(targets, scores)])


def choose_persons(quality: np.ndarray, count: int, seed: int) -> list[tuple[int, str]]:
    """(row, why) of `count` persons: the best, the worst, then rows drawn by `seed`.

    Best and worst: the highest and lowest finite quality (the first in manifest order on a tie).
    The draw is a permutation of all rows by numpy's default_rng(seed), skipping the two: which
    rows are drawn depends on the seed and the split, not on the model (but for the two skipped).
    """
    quality = np.asarray(quality, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(quality))
    if valid.size == 0:
        raise UserError("no test person has a true label: nothing to rank")
    best, worst = int(valid[np.argmax(quality[valid])]), int(valid[np.argmin(quality[valid])])
    chosen = [(best, "best")] + ([(worst, "worst")] if worst != best else [])
    taken = {best, worst}
    for row in np.random.default_rng(seed).permutation(len(quality)):
        if len(chosen) >= count:
            break
        if int(row) not in taken:
            chosen.append((int(row), "drawn"))
    return chosen


def pr_curves(targets: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """sklearn's precision_recall_curve of every class with a test positive: {class: precision, recall, thresholds}."""
    from sklearn.metrics import precision_recall_curve

    curves = {}
    for i, name in enumerate(classes):
        if targets[:, i].sum() == 0:
            continue
        precision, recall, thresholds = precision_recall_curve(targets[:, i], scores[:, i])
        curves[name] = {"precision": precision, "recall": recall, "thresholds": thresholds}
    return curves


def top_objects(attention: np.ndarray, boxes: np.ndarray, mask: np.ndarray, class_ids: np.ndarray,
                class_names: Sequence[str], k: int = TOP_OBJECTS) -> list[dict[str, Any]]:
    """The k valid objects with the largest head-averaged BOA weight (attention [h,N'], N' <= N).

    The format of pipelines/predict.py's top objects, so that its drawing applies.
    """
    weights = np.asarray(attention, dtype=np.float64).reshape(-1, attention.shape[-1]).mean(axis=0)
    valid = np.flatnonzero(np.asarray(mask, dtype=bool)[: weights.size])
    order = valid[np.argsort(-weights[valid], kind="stable")][:k]
    out = []
    for j in order:
        class_id = int(class_ids[j])
        label = class_names[class_id] if 0 <= class_id < len(class_names) else "object"
        out.append({"label": label, "weight": round(float(weights[j]), 4), "index": int(j),
                    "box": [round(float(v), 2) for v in boxes[j]]})
    return out


def top_channels(gates: np.ndarray, k: int = TOP_CHANNELS) -> list[dict[str, Any]]:
    """The k channels with the highest BPA gate (the first on a tie)."""
    gates = np.asarray(gates, dtype=np.float64)
    return [{"channel": int(c), "gate": float(gates[c])} for c in np.argsort(-gates, kind="stable")[:k]]


def ranked(scores: np.ndarray, classes: Sequence[str], truth: set[str], k: int) -> list[dict[str, Any]]:
    """The k highest-scoring classes: label, score, whether it is a true label."""
    return [{"label": classes[i], "score": float(scores[i]), "true": classes[i] in truth}
            for i in np.argsort(-np.asarray(scores), kind="stable")[:k]]


# --------------------------------------------------------------------------- the workspace


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None


def read_evaluation(paths: Workspace) -> dict[str, Any]:
    """The evaluation's headline (metrics.json) and details (metrics_per_class.json)."""
    for path in (paths.metrics_file, paths.details_file):
        if not Path(path).is_file():
            raise UserError(f"no evaluation at {path}: run `make demo` (or `dvc repro evaluate`) first")
    return {"headline": _read_json(paths.metrics_file), "details": _read_json(paths.details_file)}


def read_tables(reports_dir: Path) -> dict[str, Any]:
    """The comparison, ablation and sweep reports present in `reports_dir` ({name: [(file, content)]}).

    A file that does not parse is kept as {"unreadable": why}: the page says so instead of failing.
    """
    found: dict[str, Any] = {}
    for name, pattern in TABLE_FILES.items():
        found[name] = []
        for path in sorted(Path(reports_dir).glob(pattern)):
            try:
                content = _read_json(path)
            except UserError as exc:
                content = {"unreadable": str(exc)}
            found[name].append((path.name, content if isinstance(content, dict) else {"unreadable": "not an object"}))
    return found


def read_cooccurrence(paths: Workspace) -> tuple[np.ndarray, list[str]] | None:
    """P (data/graph/cooccurrence.npy) and the class names of data/labels.json, when both exist."""
    from core.data.manifest import read_labels

    npy = Path(paths.graph_dir) / "cooccurrence.npy"
    if not npy.is_file() or not Path(paths.labels_json).is_file():
        return None
    return np.load(npy), read_labels(paths.labels_json)


# --------------------------------------------------------------------------- the model on chosen persons


@contextmanager
def recording(module, take: Callable[[Any, Any], Any]) -> Iterator[list[np.ndarray]]:
    """Collects take(inputs, output) of every forward of `module` while open; nothing when it is None."""
    records: list[np.ndarray] = []
    if module is None:
        yield records
        return

    def hook(_module, inputs, output):
        records.append(take(inputs, output).detach().float().cpu().numpy())

    handle = module.register_forward_hook(hook)
    try:
        yield records
    finally:
        handle.remove()


def inspect_persons(package, dataset, rows: Sequence[int]) -> dict[str, Any]:
    """Scores, BOA weights, BPA gates, backbone maps and ELD's input F of `rows`, in that order (rrla)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from core.inference import predict_loader
    from pipelines.diagnose import recording_gates

    model = package.model
    loader = DataLoader(Subset(dataset, list(rows)), batch_size=len(rows), shuffle=False, num_workers=0)
    with recording_gates(model.bpa) as gates, \
            recording(model.backbone, lambda _inputs, output: output) as maps, \
            recording(model.eld, lambda inputs, _output: inputs[0]) as fused:
        indices, scores, attention = predict_loader(model, loader, with_attention=True)
    assert list(indices) == list(rows)
    without = None
    if model.eld is not None:
        with torch.no_grad():
            without = model.eld.graph_free_scores(torch.from_numpy(np.concatenate(fused))).numpy()
    return {"scores": scores, "attention": attention, "without_eld": without,
            "gates": np.concatenate(gates) if gates else None,
            "maps": np.concatenate(maps) if maps else None,
            "fused": np.concatenate(fused) if fused else None}


def person_crop(dataset, row: int, view: str) -> np.ndarray:
    """The pixels of the person view (body crop, or the face on CAER-S) as core/data/views.py cuts them."""
    from core.data import views
    from core.data.dataset import open_rgb

    rgb = np.asarray(open_rgb(dataset.data_root / dataset.image_paths[row]))
    return views.pixel_view(view, rgb, body_box=dataset.person_boxes[row], face_box=dataset.face_boxes[row])


def describe(package) -> dict[str, Any]:
    """The model's modules (rrla: pipelines/diagnose.py's description; others: the family only)."""
    from pipelines.diagnose import describe_model

    if package.model_name != "rrla":
        return {"family": package.model_name}
    return {"family": "rrla", **describe_model(package.model), "person_view": package.model.person_view}


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(np.asarray(scores, dtype=np.float64) - np.max(scores))
    return shifted / shifted.sum()


def person_record(package, dataset, row: int, why: str, scores: np.ndarray,
                  details: dict[str, Any] | None, position: int) -> dict[str, Any]:
    """One chosen person: what the page prints (JSON-ready) and, under `_`-keys, the arrays its figures draw."""
    classes, task = package.classes, package.task
    labels = dataset.labels[row]
    truth = [classes[i] for i in (labels[:1] if task == "multiclass" else labels)]  # the class targets() reads
    if details is not None:
        scores = details["scores"][position]
    k = max(TOP_PREDICTIONS, len(truth))
    shown = _softmax(scores) if task == "multiclass" else scores
    target = dataset.targets()[row:row + 1]
    record: dict[str, Any] = {
        "row": int(row), "sample_id": dataset.sample_ids[row], "image": dataset.image_paths[row], "why": why,
        "box": [round(float(v), 2) for v in dataset.person_boxes[row]], "truth": truth,
        "quality": float(person_quality(task, target, scores[None])[0]),
        "with_eld": ranked(shown, classes, set(truth), k), "predicted": predicted_labels(package, scores),
        "without_eld": None, "quality_without_eld": None, "top_objects": [], "top_channels": [],
        "_scores": np.asarray(scores), "_image": Path(dataset.data_root) / dataset.image_paths[row],
    }
    if details is None:
        return record
    if details["without_eld"] is not None:
        without = details["without_eld"][position]
        record["without_eld"] = ranked(without, classes, set(truth), k)
        record["quality_without_eld"] = float(person_quality(task, target, without[None])[0])
        record["_without"] = np.asarray(without)
    if details["attention"] is not None:
        object_row = int(dataset.object_rows[row])
        _, boxes, mask = dataset.store.get(object_row)
        record["top_objects"] = top_objects(details["attention"][position], boxes, mask,
                                            dataset.store.class_ids(object_row), dataset.store.classes)
    if details["gates"] is not None:
        record["top_channels"] = top_channels(details["gates"][position])
        record["_maps"] = details["maps"][position][[c["channel"] for c in record["top_channels"]]]
        record["_crop"] = person_crop(dataset, row, package.model.person_view)
    return record


def predicted_labels(package, scores: np.ndarray) -> list[str] | None:
    """Multi-label: the classes at or above the evaluation's val thresholds (None without them); else the argmax."""
    if package.task == "multiclass":
        return [package.classes[int(np.argmax(scores))]]
    if package.thresholds is None:
        return None
    return [c for c, s, t in zip(package.classes, scores, package.thresholds) if s >= t]


def collect(package, paths: Workspace, *, persons: int, seed: int, batch_size: int) -> dict[str, Any]:
    """Everything the page shows: the evaluation, the test scores and curves, the chosen persons, the tables."""
    from core.data.person_inputs import split_dataset
    from core.evaluation import metrics
    from core.evaluation.evaluate import score_split

    evaluation = read_evaluation(paths)
    test = score_split(package, paths, "test", batch_size)
    quality = person_quality(package.task, test.targets, test.scores)
    chosen = choose_persons(quality, persons, seed)
    dataset = split_dataset(package.model, "test", paths, kind=package.params["data"]["kind"])
    details = inspect_persons(package, dataset, [row for row, _ in chosen]) if package.model_name == "rrla" else None
    people = [person_record(package, dataset, row, why, test.scores[row], details, position)
              for position, (row, why) in enumerate(chosen)]
    multilabel = package.task == "multilabel"
    rescored = (metrics.average_precision(test.targets, test.scores).mean if multilabel
                else float((test.scores.argmax(axis=1) == test.targets).mean()))
    return {
        "model": describe(package), "task": package.task, "classes": list(package.classes),
        "dataset": package.params["data"]["kind"], "model_dir": str(paths.model_dir),
        "evaluation": evaluation, "rescored": rescored, "test_persons": len(test.targets),
        "curves": pr_curves(test.targets, test.scores, package.classes) if multilabel else None,
        "cooccurrence": read_cooccurrence(paths) if multilabel else None,
        "selection": {"seed": int(seed), "persons": int(persons)}, "persons": people,
        "tables": read_tables(paths.reports_dir), "batch_size": int(batch_size),
    }
