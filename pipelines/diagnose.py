"""What the trained rrla model attends to, and what a linear probe finds in the object features.

    ctxemo diagnose                          # artifacts/model on val; the probe on val and test
    ctxemo diagnose --split test --nearest 5 --no-probe

Three records (issue #17, item 7), written to reports/diagnose.{md,json}:

- BOA attention near the person. "Near" is the distance between box centres with each axis in
  units of the person box's side along it,

      d_m = sqrt(((cx_m - cx_B) / w_B)^2 + ((cy_m - cy_B) / h_B)^2),

  the scaling BOA's own geometry term uses (models/boa.py), so that it means the same for a
  small and a large person. For every person with at least one valid object, the attention
  weights (ModelOutput.attention [h,N], padding masked out) are averaged over the heads and
  summed over the k valid objects with the smallest d (`nearest`; ties go to the earlier,
  higher-scoring stored object). Uniform attention would put min(k, n)/n there (n valid
  objects): a mass ratio of 1 means BOA ignores closeness. Entropy is reported relative to
  log n (the uniform entropy), over the persons with at least two objects, for the
  head-averaged weights and for each head. With `model.rrla.boa.enabled: false`
  (EqualObjectPooling) every valid object weighs 1/n: uniform by construction, nothing to record.
- BPA channel gates: the squeeze-and-excitation gates (models/bpa.py `gates`, [C] in (0, 1) per
  person), recorded by a forward hook while the model scores the split.
- A linear probe on the stored object features (no model needed): per person the mean of the
  valid objects, the closeness-weighted mean (weights softmax(-d / temperature) over the valid
  objects, temperature 1: an object one person-size further away weighs e times less) and the
  single nearest object; each fitted on train by StandardScaler + PCA (64 dims, fewer when there
  are fewer samples or features) + logistic regression (one-vs-rest on multi-label data,
  multinomial on single-label) and scored on val and test with the evaluation's own metric
  (mAP or accuracy), next to the evaluation's label-frequency (majority-class) baseline.
  Persons without objects get zero features. Seeded; the full SVD and lbfgs are deterministic.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.evaluation import metrics
from core.evaluation.report import markdown_table
from core.workspace import Workspace
from models.config import ConfigError

SPLITS = ("val", "test")
PROBE_FEATURES = {"mean": "mean of valid objects", "weighted": "closeness-weighted mean",
                  "nearest": "nearest object"}
PROBE_DIMS = 64
_MIN_SIDE = 1e-3  # pixels; as models/boa.py, a degenerate person box must not divide by zero
_PROBE_CHUNK = 256  # persons whose object features are pooled at once (bounded memory on large splits)


# --------------------------------------------------------------------------- geometry and attention


def centre_distances(obj_boxes: np.ndarray, person_box: np.ndarray) -> np.ndarray:
    """d of the module docstring: boxes [..., N, 4] and person [..., 4] (x1y1x2y2) -> [..., N]."""
    obj = np.asarray(obj_boxes, dtype=np.float64)
    person = np.asarray(person_box, dtype=np.float64)[..., None, :]
    width = np.maximum(person[..., 2] - person[..., 0], _MIN_SIDE)
    height = np.maximum(person[..., 3] - person[..., 1], _MIN_SIDE)
    dx = ((obj[..., 0] + obj[..., 2]) - (person[..., 0] + person[..., 2])) / (2 * width)
    dy = ((obj[..., 1] + obj[..., 3]) - (person[..., 1] + person[..., 3])) / (2 * height)
    return np.hypot(dx, dy)


def nearest_mask(distances: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """[..., N] bool: the k valid objects with the smallest distance (all of them when fewer)."""
    mask = np.asarray(mask, dtype=bool)
    masked = np.where(mask, distances, np.inf)
    ranks = np.argsort(np.argsort(masked, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (ranks < k) & mask


def _entropy(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    safe = np.where(mask & (weights > 0), weights, 1.0)
    return -(np.where(mask, weights, 0.0) * np.log(safe)).sum(axis=-1)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def attention_summary(attention: np.ndarray, obj_boxes: np.ndarray, obj_mask: np.ndarray,
                      person_box: np.ndarray, k: int) -> dict[str, Any]:
    """Attention mass on the k nearest objects vs the uniform level (see the module docstring).

    attention [S,h,N'] (N' <= N: `boa.max_objects` keeps the first N'), obj_boxes [S,N,4],
    obj_mask [S,N], person_box [S,4]. Persons without a valid object have no attention to
    record and are counted apart.
    """
    attention = np.asarray(attention, dtype=np.float64)
    width = attention.shape[-1]
    boxes, mask = np.asarray(obj_boxes)[:, :width], np.asarray(obj_mask, dtype=bool)[:, :width]
    attention = np.where(mask[:, None, :], attention, 0.0)
    counts = mask.sum(axis=-1)
    keep, several = counts > 0, counts >= 2
    near = nearest_mask(centre_distances(boxes, person_box), mask, k)
    averaged = attention.mean(axis=1)
    mass = (averaged * near).sum(axis=-1)
    head_mass = (attention * near[:, None, :]).sum(axis=-1)
    uniform = np.minimum(k, counts) / np.maximum(counts, 1)
    log_n = np.log(np.maximum(counts, 1))
    head_entropy = _entropy(attention, mask[:, None, :]).mean(axis=1)
    informative = keep & (counts > k)  # with n <= k every weighting puts all its mass there
    mean_mass, mean_uniform = _mean(mass[keep]), _mean(uniform[keep])
    return {
        "nearest_k": int(k), "heads": int(attention.shape[1]), "persons": int(keep.sum()),
        "persons_without_objects": int((~keep).sum()),
        "persons_with_more_than_k": int(informative.sum()),
        "mass_nearest": mean_mass, "uniform_level": mean_uniform, "mass_ratio": _ratio(mean_mass, mean_uniform),
        "above_uniform": _mean((mass[informative] > uniform[informative] + 1e-9).astype(float)),
        "per_head_mass_ratio": [_ratio(_mean(head_mass[keep, h]), mean_uniform) for h in range(head_mass.shape[1])],
        "entropy_ratio": _ratio(_mean(_entropy(averaged, mask)[several]), _mean(log_n[several])),
        "head_entropy_ratio": _ratio(_mean(head_entropy[several]), _mean(log_n[several])),
    }


def uniform_summary(obj_mask: np.ndarray, k: int) -> dict[str, Any]:
    """What EqualObjectPooling (BOA off) puts on the nearest k: the uniform level, by construction."""
    counts = np.asarray(obj_mask, dtype=bool).sum(axis=-1)
    keep = counts > 0
    return {"nearest_k": int(k), "persons": int(keep.sum()), "persons_without_objects": int((~keep).sum()),
            "uniform_by_construction": True,
            "uniform_level": _mean((np.minimum(k, counts) / np.maximum(counts, 1))[keep]),
            "note": "model.rrla.boa.enabled is false (EqualObjectPooling): every valid object weighs 1/n, "
                    "so the attention is uniform by construction"}


# --------------------------------------------------------------------------- BPA gates


@contextmanager
def recording_gates(bpa) -> Iterator[list[np.ndarray]]:
    """Collects BPA's gates [B,C] of every forward while open; nothing when `bpa` is None."""
    import torch

    records: list[np.ndarray] = []
    if bpa is None:
        yield records
        return

    def hook(module, inputs, _output):
        with torch.no_grad():
            records.append(module.gates(inputs[0]).float().cpu().numpy())

    handle = bpa.register_forward_hook(hook)
    try:
        yield records
    finally:
        handle.remove()


def gate_summary(gates: np.ndarray, top: int = 5) -> dict[str, Any]:
    """gates [S,C] in (0, 1): how strong, how channel-specific and how person-specific they are."""
    gates = np.asarray(gates, dtype=np.float64)
    channel_mean = gates.mean(axis=0)
    best = np.argsort(-channel_mean, kind="stable")[:top]
    return {
        "persons": int(gates.shape[0]), "channels": int(gates.shape[1]), "mean": float(gates.mean()),
        "std_across_channels": float(gates.std(axis=1).mean()),
        "std_across_persons": float(gates.std(axis=0).mean()),
        "channels_below_0.1": float((channel_mean < 0.1).mean()), "channels_above_0.9": float((channel_mean > 0.9).mean()),
        "gates_below_0.1": float((gates < 0.1).mean()), "gates_above_0.9": float((gates > 0.9).mean()),
        "top_channels": [{"channel": int(c), "mean": float(channel_mean[c])} for c in best],
    }


# --------------------------------------------------------------------------- linear probe


def probe_features(feats: np.ndarray, boxes: np.ndarray, mask: np.ndarray, person_box: np.ndarray,
                   temperature: float = 1.0) -> dict[str, np.ndarray]:
    """The three per-person feature sets of the module docstring: feats [S,N,D] -> {name: [S,D]}."""
    mask = np.asarray(mask, dtype=bool)
    # padded rows may hold anything (float16 garbage): clear them before any sum
    feats = np.where(mask[..., None], np.asarray(feats, dtype=np.float32), np.float32(0.0))
    counts = mask.sum(axis=-1, keepdims=True)
    distances = centre_distances(boxes, person_box)
    logits = np.where(mask, -distances / temperature, -np.inf)
    logits = logits - np.where(counts > 0, logits.max(axis=-1, keepdims=True), 0.0)
    closeness = np.where(mask, np.exp(logits), 0.0)
    closeness /= np.maximum(closeness.sum(axis=-1, keepdims=True), 1e-12)
    nearest = nearest_mask(distances, mask, 1)
    return {
        "mean": feats.sum(axis=1) / np.maximum(counts, 1),
        "weighted": np.einsum("sn,snd->sd", closeness.astype(np.float32), feats),
        "nearest": np.einsum("sn,snd->sd", nearest.astype(np.float32), feats),
    }


def score(task: str, targets: np.ndarray, scores: np.ndarray, num_classes: int) -> float | None:
    """The evaluation's primary metric: mAP (multi-label) or accuracy (single-label)."""
    if task == "multilabel":
        return metrics.average_precision(targets, scores).mean
    return metrics.multiclass_report(targets, scores, num_classes)["accuracy"]


def fit_probe(train: tuple[np.ndarray, np.ndarray], evaluate: dict[str, tuple[np.ndarray, np.ndarray]],
              task: str, num_classes: int, seed: int = 0, dims: int = PROBE_DIMS) -> dict[str, float | None]:
    """StandardScaler + PCA + logistic regression fitted on `train` (x, y); the metric on each of `evaluate`."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = train
    components = max(1, min(dims, x.shape[0] - 1, x.shape[1]))
    logistic = LogisticRegression(max_iter=2000, random_state=seed)
    classifier = OneVsRestClassifier(logistic) if task == "multilabel" else logistic
    probe = make_pipeline(StandardScaler(), PCA(components, svd_solver="full", random_state=seed), classifier)
    with warnings.catch_warnings():
        # a class without training positives gets a constant scorer: the metric reports it anyway
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        probe.fit(x, y)
    results = {}
    for name, (eval_x, eval_y) in evaluate.items():
        probabilities = probe.predict_proba(eval_x)
        if task != "multilabel":  # a class absent from train has no column: it scores 0
            full = np.zeros((len(eval_x), num_classes))
            full[:, probe.classes_] = probabilities
            probabilities = full
        results[name] = score(task, eval_y, probabilities, num_classes)
    return results


def split_objects(paths: Workspace, split: str, temperature: float) -> dict[str, Any]:
    """The probe features of every manifest person of `split` and their targets (as the evaluation reads them)."""
    from core.data.manifest import read_manifest
    from core.data.object_store import ObjectStore

    manifest = read_manifest(split, paths.manifest_dir)
    store = ObjectStore(Path(paths.objects_dir) / split)
    person_boxes = np.stack(manifest["person_box"].map(np.asarray).tolist()).astype(np.float32)
    rows = [store.row_of(sample_id) for sample_id in manifest["sample_id"]]
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in PROBE_FEATURES}
    for start in range(0, len(rows), _PROBE_CHUNK):
        feats, boxes, masks = zip(*(store.get(row) for row in rows[start:start + _PROBE_CHUNK]))
        chunk = probe_features(np.stack(feats), np.stack(boxes), np.stack(masks),
                               person_boxes[start:start + _PROBE_CHUNK], temperature)
        for name in PROBE_FEATURES:
            pooled[name].append(chunk[name])
    return {name: np.concatenate(parts) for name, parts in pooled.items()} | {"labels": manifest["labels"]}


def _targets(labels, task: str, num_classes: int) -> np.ndarray:
    from core.data.dataset import multi_hot

    if task == "multiclass":
        return np.array([next(iter(row)) for row in labels], dtype=np.int64)
    return np.stack([multi_hot(row, num_classes) for row in labels])


def probe(paths: Workspace, task: str, num_classes: int, *, seed: int = 0, temperature: float = 1.0,
          splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """The three probes (train -> each of `splits` present) and the label-frequency baseline."""
    from core.training.inputs import label_frequencies

    splits = [s for s in splits if (Path(paths.manifest_dir) / f"{s}.parquet").is_file()]
    data = {split: split_objects(paths, split, temperature) for split in ("train", *splits)}
    targets = {split: _targets(d["labels"], task, num_classes) for split, d in data.items()}
    rows = {name: fit_probe((data["train"][name], targets["train"]),
                            {s: (data[s][name], targets[s]) for s in splits}, task, num_classes, seed)
            for name in PROBE_FEATURES}
    frequency = label_frequencies(paths.manifest_dir, num_classes)
    # the evaluation's baseline (core/evaluation/evaluate.py): every person scored with the training frequencies
    baseline = {s: (metrics.average_precision(targets[s], np.tile(frequency, (len(targets[s]), 1))).mean
                    if task == "multilabel" else float((targets[s] == int(np.argmax(frequency))).mean()))
                for s in splits}
    return {"metric": "mAP" if task == "multilabel" else "accuracy", "splits": splits, "features": rows,
            "baseline": baseline, "train_persons": len(targets["train"]), "temperature": temperature,
            "dims": PROBE_DIMS, "seed": seed}


# --------------------------------------------------------------------------- the model's records


def record_model(package, paths: Workspace, split: str, batch_size: int) -> dict[str, Any]:
    """Scores, BOA weights and BPA gates of every person of `split`, in manifest order."""
    from torch.utils.data import DataLoader

    from core.data.person_inputs import split_dataset
    from core.inference import predict_loader

    model = package.model
    dataset = split_dataset(model, split, paths, kind=package.params["data"]["kind"])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with recording_gates(model.bpa) as gates:
        indices, scores, attention = predict_loader(model, loader, with_attention=True)
    order = np.argsort(indices)
    layout = [dataset.store.get(int(row)) for row in dataset.object_rows]
    return {"scores": scores[order], "targets": dataset.targets(),
            "attention": None if attention is None else attention[order],
            "gates": np.concatenate(gates)[order] if gates else None,
            "obj_boxes": np.stack([boxes for _, boxes, _ in layout]),
            "obj_mask": np.stack([mask for _, _, mask in layout]), "person_box": dataset.person_boxes}


def describe_model(model) -> dict[str, Any]:
    cfg = model.config
    return {"backbone": cfg.backbone.name, "boa": {"enabled": cfg.boa.enabled, "heads": cfg.boa.heads,
                                                   "geometry": cfg.boa.geometry, "max_objects": cfg.boa.max_objects},
            "bpa": {"enabled": cfg.bpa.enabled, "hidden": cfg.bpa.hidden}, "eld": {"enabled": cfg.eld.enabled}}


def run(paths: Workspace, *, split: str = "val", nearest: int = 3, with_probe: bool = True, batch_size: int = 16,
        seed: int = 0, temperature: float = 1.0, package=None) -> dict[str, Any]:
    """Record attention and gates of the trained rrla model at `paths.model_dir` on `split`, and the probe."""
    from core.inference import load_model_package

    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    if nearest < 1:
        raise UserError(f"--nearest must be at least 1, not {nearest}")
    if package is None:
        try:
            package = load_model_package(paths.model_dir)
        except ConfigError as exc:
            # the loader speaks of params.yaml; here it is the checkpoint that predates the code
            raise UserError(f"{Path(paths.model_dir) / 'model.pt'} does not load with this version of the code "
                            f"({exc}); retrain it: `dvc repro train` (or `make demo`)") from None
    if package.model_name != "rrla":
        raise UserError(f"{paths.model_dir} holds a {package.model_name} model; ctxemo diagnose records rrla's "
                        "BOA and BPA: train rrla (model.name: rrla) or point --model-dir at an rrla model")
    recorded = record_model(package, paths, split, batch_size)
    num_classes = len(package.classes)
    if recorded["attention"] is None:
        limit = package.model.config.boa.max_objects  # EqualObjectPooling reads only the first ones too
        attention = uniform_summary(recorded["obj_mask"][:, :limit], nearest)
    else:
        attention = attention_summary(recorded["attention"], recorded["obj_boxes"], recorded["obj_mask"],
                                      recorded["person_box"], nearest)
    gates = (gate_summary(recorded["gates"]) if recorded["gates"] is not None else
             {"note": "model.rrla.bpa.enabled is false: the model has no BPA gates"})
    return {
        "model_dir": str(paths.model_dir), "model": describe_model(package.model), "task": package.task,
        "split": split, "persons": len(recorded["targets"]),
        "metric": "mAP" if package.task == "multilabel" else "accuracy",
        "model_score": score(package.task, recorded["targets"], recorded["scores"], num_classes),
        "attention": attention, "bpa": gates,
        "probe": probe(paths, package.task, num_classes, seed=seed, temperature=temperature) if with_probe else None,
    }


# --------------------------------------------------------------------------- report


def _attention_markdown(att: dict[str, Any]) -> list[str]:
    k = att["nearest_k"]
    lines = [f"## BOA: attention on the {k} objects nearest the person", ""]
    if att.get("uniform_by_construction"):
        return lines + [att["note"] + f"; uniform level on the nearest {k}: {att['uniform_level']:.3f}.", ""]
    rows = [(f"mass on the nearest {k} (head-averaged, mean over persons)", att["mass_nearest"]),
            (f"uniform level (mean of min({k}, n)/n)", att["uniform_level"]),
            ("ratio (1 = closeness ignored)", att["mass_ratio"]),
            (f"share of persons above the uniform level (of those with more than {k} objects)", att["above_uniform"]),
            ("entropy / uniform entropy, head-averaged weights", att["entropy_ratio"]),
            ("entropy / uniform entropy, each head (mean)", att["head_entropy_ratio"])]
    per_head = ", ".join("n/a" if r is None else f"{r:.2f}" for r in att["per_head_mass_ratio"])
    return lines + [markdown_table(["", "value"], rows), "",
                    (f"{att['persons']} persons with objects ({att['persons_with_more_than_k']} with more than {k}; "
                     f"{att['persons_without_objects']} without any); mass ratio per head: {per_head}."), ""]


def _gates_markdown(bpa: dict[str, Any]) -> list[str]:
    lines = ["## BPA: channel gates", ""]
    if "note" in bpa:
        return lines + [bpa["note"] + ".", ""]
    rows = [("mean gate", bpa["mean"]), ("std across channels (mean over persons)", bpa["std_across_channels"]),
            ("std across persons (mean over channels)", bpa["std_across_persons"]),
            ("channels with mean gate < 0.1", bpa["channels_below_0.1"]),
            ("channels with mean gate > 0.9", bpa["channels_above_0.9"]),
            ("gates < 0.1 (all persons and channels)", bpa["gates_below_0.1"]),
            ("gates > 0.9 (all persons and channels)", bpa["gates_above_0.9"])]
    top = ", ".join(f"{c['channel']} ({c['mean']:.3f})" for c in bpa["top_channels"])
    return lines + [markdown_table(["", "value"], rows), "",
                    f"{bpa['channels']} channels, {bpa['persons']} persons; top channels by mean gate: {top}.", ""]


def _probe_markdown(probe_result: dict[str, Any]) -> list[str]:
    metric, splits = probe_result["metric"], probe_result["splits"]
    rows = [[label, *(probe_result["features"][name][s] for s in splits)] for name, label in PROBE_FEATURES.items()]
    rows.append(["label-frequency baseline" if metric == "mAP" else "majority-class baseline",
                 *(probe_result["baseline"][s] for s in splits)])
    return ["## Linear probe on the stored object features", "",
            markdown_table(["features", *(f"{s} {metric}" for s in splits)], rows), "",
            (f"StandardScaler + PCA ({probe_result['dims']} dims at most) + logistic regression fitted on "
             f"{probe_result['train_persons']} train persons, seed {probe_result['seed']}; closeness weights "
             f"softmax(-d / {probe_result['temperature']:g})."), ""]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(result: dict[str, Any]) -> str:
    model = result["model"]
    boa = model["boa"]
    head = (f"model: {result['model_dir']} (rrla, {model['backbone']}; BOA "
            + (f"{boa['heads']} heads, geometry {'on' if boa['geometry'] else 'off'}" if boa["enabled"] else "off")
            + f"; BPA {'hidden ' + str(model['bpa']['hidden']) if model['bpa']['enabled'] else 'off'}; "
            f"ELD {'on' if model['eld']['enabled'] else 'off'}); split {result['split']}, {result['persons']} persons, "
            f"{result['metric']} {_number(result['model_score'])}.")
    lines = ["# What rrla attends to (ctxemo diagnose)", "", head, "",
             "Distances: between box centres, each axis in units of the person box's side (pipelines/diagnose.py).", "",
             *_attention_markdown(result["attention"]), *_gates_markdown(result["bpa"])]
    if result["probe"] is not None:
        lines += _probe_markdown(result["probe"])
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """`diagnose.md` and `diagnose.json` in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "diagnose.md", out_dir / "diagnose.json"
    md.write_text(markdown(result))
    js.write_text(json.dumps(result, indent=2))
    return md, js
