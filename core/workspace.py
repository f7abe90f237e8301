"""Where everything lives: one object for every path the pipeline reads or writes.

A workspace is a DVC project folder. Its layout is written down once, here (`LAYOUT`), and
dvc.yaml names the same paths as stage outputs (tests/test_workspace.py checks that the two
agree). Stages, the training driver, evaluation, registration, ablations and sweeps all take a
`Workspace` instead of spelling paths themselves; a test or an ablation that keeps its model
elsewhere moves just that entry:

    ws = Workspace.at(".", data_root=params.data.root)              # the DVC workspace
    ws = Workspace.at(tmp, data_root=raw, model_dir=tmp / "run/model")   # one entry moved

Every path is `root / LAYOUT[name]` unless moved; `data_root` (the data set, params
`data.root`) is relative to `root` unless absolute. `resolved()` makes them absolute, which
Ray workers on other processes or nodes need.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYOUT: dict[str, str] = {
    "manifest_dir": "data/manifest",             # ingest: {train,val,test,quarantine}.parquet, summary.json
    "labels_json": "data/labels.json",           # ingest: ordered class names
    "detections_dir": "data/detections",         # detect: <split>.parquet face boxes
    "objects_dir": "data/objects",               # objects: <split>/ features, boxes, index, meta
    "people_dir": "data/people",                 # people: <split>.parquet detected person boxes, detector.pt
    "graph_dir": "data/graph",                   # cooccurrence + embeddings
    "body_cache_root": "data/cache/body",        # train.frozen_backbone / tune.frozen_backbone maps
    "model_dir": "artifacts/model",              # train: the best checkpoint
    "thresholds_file": "artifacts/thresholds.json",  # evaluate: per-class thresholds chosen on val
    "ablations_dir": "artifacts/ablations",      # ctxemo ablate: one folder per variant and seed
    "reports_dir": "reports",                    # markdown/json reports (ablations, sweeps, benchmarks)
    "train_report_dir": "reports/train",         # train: history.json, summary.json
    "metrics_file": "reports/metrics.json",      # evaluate: the DVC metrics
    "details_file": "reports/metrics_per_class.json",  # evaluate: per-class figures (not a DVC metric)
    "plots_dir": "reports/plots",                # evaluate: DVC plots
    "ingest_metrics": "reports/ingest.json",     # ingest: counts as DVC metrics
    "people_report": "reports/people.json",      # people: detector AP vs random boxes (DVC metrics)
    "compare_dir": "artifacts/compare",          # compare: <model>/ its model, thresholds, per-class figures, plots
    "compare_metrics_dir": "reports/compare",    # compare: <model>.json, one row of the table (DVC metrics)
    "compare_table": "reports/compare.md",       # compare_report: the table (and compare.json beside it)
    "ray_storage": ".ray_results",               # Ray Train / Tune checkpoints (local runs)
    "dvc_lock": "dvc.lock",
    "params_file": "params.yaml",
}


@dataclass(frozen=True)
class Workspace:
    root: Path
    data_root: Path | None
    manifest_dir: Path
    labels_json: Path
    detections_dir: Path
    objects_dir: Path                           # its resumable shards sit beside it, in <objects_dir>.shards
    people_dir: Path
    graph_dir: Path
    body_cache_root: Path
    model_dir: Path
    thresholds_file: Path
    ablations_dir: Path
    reports_dir: Path
    train_report_dir: Path
    metrics_file: Path
    details_file: Path
    plots_dir: Path
    ingest_metrics: Path
    people_report: Path
    compare_dir: Path
    compare_metrics_dir: Path
    compare_table: Path
    ray_storage: Path
    dvc_lock: Path
    params_file: Path

    @classmethod
    def at(cls, root: str | Path = ".", data_root: str | Path | None = None, **moved: str | Path) -> "Workspace":
        """The workspace in `root`, with the entries named in `moved` placed elsewhere."""
        unknown = sorted(set(moved) - set(LAYOUT))
        if unknown:
            raise TypeError(f"Workspace has no entry {unknown}; entries: {sorted(LAYOUT)}")
        root = Path(root)
        values: dict[str, Any] = {name: root / relative for name, relative in LAYOUT.items()}
        values.update({name: Path(path) for name, path in moved.items()})
        if data_root is not None:
            data_root = Path(data_root)
            data_root = data_root if data_root.is_absolute() else root / data_root
        return cls(root=root, data_root=data_root, **values)

    @property
    def objects_meta(self) -> Path:
        """What the objects stage recorded about its extractor (read by registration and predict)."""
        return self.objects_dir / "train" / "meta.json"

    def resolved(self) -> "Workspace":
        return Workspace(**{name: None if value is None else Path(value).resolve()
                            for name, value in self.as_dict().items()})

    def moved(self, **changes: str | Path) -> "Workspace":
        return dataclasses.replace(self, **{name: Path(path) for name, path in changes.items()})

    def as_dict(self) -> dict[str, Path | None]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def to_strings(self) -> dict[str, str | None]:
        """Plain strings, for configs that travel to Ray workers or into JSON."""
        return {name: None if value is None else str(value) for name, value in self.as_dict().items()}

    @classmethod
    def from_strings(cls, values: dict[str, str | None]) -> "Workspace":
        return cls(**{name: None if value is None else Path(value) for name, value in values.items()})


DEFAULT_WORKSPACE = Workspace.at(".")
