"""The paper's Table 4 ablations on the same data, in one command.

    ctxemo ablate                       # every column of Table 4 (ten variants, below)
    ctxemo ablate --variant full --variant no_eld
    ctxemo ablate --seed 0 --seed 1 --seed 2     # each variant with three seeds: mean, std, paired gaps
    ctxemo ablate --frozen-backbone              # backbone maps computed once, the rest trains: about
                                                 # twice as fast here, for ablations on larger data

The variants are the paper's Table 4 columns, built up from its baseline: the body stream with
the top-N objects weighted equally (the paper: "in the methods without BOA ... we assign equal
weight values to features of all top objects") and a linear classifier; +BPA, +BOA, +ELD; the
pairwise combinations; the full model without the geometry term; the full model on a
MobileNetV2; the full model. The pairwise combinations are the leave-one-out variants
ctxemo has always run and keep their names (no_eld = BOA + BPA, no_bpa = BOA + ELD,
no_boa = BPA + ELD), so their finished runs stay valid.

Each variant is params.yaml with its switches flipped, trained by the same training stage
(core.training.trainer.run, Ray Train) and evaluated by the same evaluation (core.evaluation.evaluate.run)
into `artifacts/ablations/<variant>/seed<k>/`; the comparison goes to `reports/ablations.md` and
`reports/ablations.json`, one row per variant in the paper's order with the modules it has. With
a frozen backbone (`train.frozen_backbone`, which `--frozen-backbone` sets) the runs go to
`artifacts/ablations/frozen_backbone/` and the comparison to
`reports/ablations_frozen_backbone.{md,json}`, so both kinds coexist. The stage outputs the
variants need (manifest, objects, label graph) must exist: run `dvc repro evaluate` (or
`make demo`) first.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.report import markdown_table
from core.params import apply_overrides, params_from_dict, params_to_dict
from core.workspace import DEFAULT_WORKSPACE, Workspace

BOA_OFF = {"model.rrla.boa.enabled": False}
BPA_OFF = {"model.rrla.bpa.enabled": False}
ELD_OFF = {"model.rrla.eld.enabled": False}
# In the order of the paper's Table 4 columns. A pretrained-weights file belongs to the
# configured backbone, so the MobileNetV2 variant drops it (a pretrained one comes from
# torchvision's weight enum when `pretrained` is on).
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {**BOA_OFF, **BPA_OFF, **ELD_OFF},
    "bpa_only": {**BOA_OFF, **ELD_OFF},
    "boa_only": {**BPA_OFF, **ELD_OFF},
    "eld_only": {**BOA_OFF, **BPA_OFF},
    "no_eld": ELD_OFF,
    "no_bpa": BPA_OFF,
    "no_boa": BOA_OFF,
    "no_geometry": {"model.rrla.boa.geometry": False},
    "mobilenet_v2": {"model.rrla.backbone.name": "mobilenet_v2", "model.rrla.backbone.weights": None},
    "full": {},
}
# Table 4's mAP (%) on EMOTIC where its extracted text says which column is which: columns 4, 6
# and 7 are +ELD and the two pairs with ELD, in an order the text does not show.
PAPER_MAP: dict[str, float] = {"baseline": 27.11, "bpa_only": 28.08, "boa_only": 29.76, "no_eld": 30.35,
                               "no_geometry": 31.86, "mobilenet_v2": 29.33, "full": 32.41}


def modules(params) -> dict[str, Any]:
    """What a variant's model has, read from its params (the table's module columns)."""
    rrla = params.model.rrla
    return {"BOA": "attention" if rrla.boa.enabled else "equal weights",
            "geometry": bool(rrla.boa.enabled and rrla.boa.geometry),
            "BPA": bool(rrla.bpa.enabled), "ELD": bool(rrla.eld.enabled), "backbone": rrla.backbone.name}


def variant_params(base: dict[str, Any], variant: str, seed: int | None = None):
    check_variants([variant])
    seed_override = {} if seed is None else {"seed": seed}
    return params_from_dict(apply_overrides(base, {**VARIANTS[variant], **seed_override}))


RESULT_FILE = "result.json"
# The frozen-backbone runs read cached maps: loader processes would only add start-up time.
FROZEN_BACKBONE = {"train.frozen_backbone": True, "train.loader_workers": 0}


def with_backbone_mode(base: dict[str, Any], frozen_backbone: bool) -> dict[str, Any]:
    # The ablations are the flagship's (paper Table 4), whichever model params.yaml trains.
    base = apply_overrides(base, {"model.name": "rrla"})
    return apply_overrides(base, FROZEN_BACKBONE) if frozen_backbone else base


def output_names(base: dict[str, Any]) -> tuple[str, str]:
    """(subfolder of the runs, report file stem) for the backbone mode `base` trains with."""
    if params_from_dict(base).train.frozen_backbone:
        return "frozen_backbone", "ablations_frozen_backbone"
    return "", "ablations"


CODE_PACKAGES = ("models", "core", "stages")


def code_fingerprint() -> str:
    """sha256 over the source of the packages that train and evaluate a model."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        folder = Path(importlib.import_module(package).__file__).parent
        for file in sorted(folder.rglob("*.py")):
            digest.update(f"{file.relative_to(folder.parent)}".encode() + file.read_bytes())
    return digest.hexdigest()


def inputs_fingerprint(params, paths) -> str:
    """What a finished variant run depends on: its full params, the code that trains and
    evaluates it, the manifests and label graph (by content) and the stored object features
    (by file name and size)."""
    digest = hashlib.sha256(json.dumps(params_to_dict(params), sort_keys=True).encode())
    digest.update(code_fingerprint().encode())
    for folder in (paths.manifest_dir, paths.graph_dir):
        for file in sorted(Path(folder).glob("*")):
            if file.is_file():
                digest.update(file.name.encode() + file.read_bytes())
    for file in sorted(Path(paths.objects_dir).rglob("*")):
        if file.is_file():
            digest.update(f"{file.relative_to(paths.objects_dir)}:{file.stat().st_size}".encode())
    return digest.hexdigest()


def run_variant(base: dict[str, Any], variant: str, out_root: Path, seed: int | None = None,
                reuse: bool = True) -> dict[str, Any]:
    """Train and evaluate one variant with one seed (params' own seed when None) into
    `out_root/<variant>/seed<k>/`.

    A run that finished before with the same params, code and data is not trained again (its
    `result.json` is read back), so an interrupted `ctxemo ablate` continues where it stopped
    and adding a seed trains only the new runs; `reuse=False` trains everything.
    """
    from core.evaluation import evaluate
    from core.training import trainer

    seed = base.get("seed", 0) if seed is None else seed
    params = variant_params(base, variant, seed)
    root = out_root / variant / f"seed{seed}"
    paths = Workspace.at(data_root=params.data.root, model_dir=root / "model", train_report_dir=root / "train",
                         thresholds_file=root / "thresholds.json", metrics_file=root / "metrics.json",
                         details_file=root / "metrics_per_class.json", plots_dir=root / "plots")
    fingerprint = inputs_fingerprint(params, paths)
    finished = root / RESULT_FILE
    if reuse and finished.is_file():
        record = json.loads(finished.read_text())
        if record.get("fingerprint") == fingerprint:
            print(f"[ablate] {variant} seed {seed}: finished before with the same params, code and data, "
                  f"reusing {finished}", flush=True)
            return {**record["row"], "reused": True}
    started = time.perf_counter()
    train_summary = trainer.run(params, paths, run_name=f"ablation-{variant}-seed{seed}",
                              tags={"ctxemo.variant": variant, "ctxemo.seed": str(seed)})
    results = evaluate.run(paths, batch_size=params.train.batch_size)
    row = {"variant": variant, "seed": seed, "overrides": VARIANTS[variant], "modules": modules(params),
           "train": train_summary,
           "test": results, "seconds": round(time.perf_counter() - started, 1)}
    finished.write_text(json.dumps({"fingerprint": fingerprint, "row": row}, indent=2, default=str))
    return row


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def comparison(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One entry per variant, in the paper's column order: the modules it has, the primary test
    metric over seeds (mean, sample std), its gap to the full model paired by seed, and on how
    many seeds the full model did better. Returns (the paper-layout markdown table, entries).

    Seeds pair naturally: the same seed gives every variant the same data order and the same
    initialisation of the layers they share, so `full - variant` per seed is the fair gap.
    """
    task = rows[0]["test"]["task"]
    key = "mAP" if task == "multilabel" else "accuracy"
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r
    order = [v for v in VARIANTS if v in by_variant] + [v for v in by_variant if v not in VARIANTS]
    full = by_variant.get("full", {})
    table = [_summary(variant, by_variant[variant], full, task, key) for variant in order]
    return paper_layout(table, key), table


def _summary(variant: str, runs: dict[int, dict[str, Any]], full: dict[int, dict[str, Any]], task: str,
             key: str) -> dict[str, Any]:
    seeds = sorted(runs)
    test_mean, test_std = _mean_std([runs[s]["test"][key] for s in seeds])
    entry: dict[str, Any] = {
        "variant": variant, "modules": runs[seeds[0]].get("modules", {}), "seeds": len(seeds),
        f"test_{key}": test_mean, f"test_{key}_std": test_std,
        f"val_{key}": _mean_std([runs[s]["test"][f"val_{key}"] for s in seeds])[0],
    }
    paired = [runs[s]["test"][key] - full[s]["test"][key] for s in seeds if s in full]
    entry["delta_vs_full"] = _mean_std(paired)[0] if paired else None
    entry["full_better_on"] = (f"{sum(d < 0 for d in paired)}/{len(paired)}"
                               if paired and variant != "full" else None)
    if task == "multilabel":
        entry.update({"c_f1": _mean_std([runs[s]["test"]["c_f1"] for s in seeds])[0],
                      "o_f1": _mean_std([runs[s]["test"]["o_f1"] for s in seeds])[0],
                      "baseline_mAP": runs[seeds[0]]["test"]["baseline_mAP"],
                      "paper_mAP": PAPER_MAP.get(variant)})
    entry["seconds"] = round(sum(runs[s]["seconds"] for s in seeds) / len(seeds))
    entry["per_seed"] = {str(s): runs[s]["test"][key] for s in seeds}
    return entry


def _tick(value: Any) -> str:
    return {True: "✓", False: "–"}.get(value, str(value)) if value is not None else ""


def paper_layout(table: list[dict[str, Any]], key: str = "mAP") -> str:
    """The markdown table in the paper's layout: one row per variant, its modules, the metric
    (mean ± sample std over seeds, and per seed), the paired gap to the full model."""
    header = ["variant", "BOA", "BPA", "ELD", "geometry", "backbone", f"test {key} (mean ± std)", "per seed",
              "gap to full", "full better on", f"val {key}"]
    with_paper = any(entry.get("paper_mAP") is not None for entry in table)
    header += ["paper mAP (%)"] * with_paper + ["s / run"]
    lines = []
    for entry in table:
        mods, mean, std = entry["modules"], entry[f"test_{key}"], entry[f"test_{key}_std"]
        gap = entry["delta_vs_full"]
        row = [entry["variant"], mods.get("BOA", ""), _tick(mods.get("BPA")), _tick(mods.get("ELD")),
               _tick(mods.get("geometry")), mods.get("backbone", ""),
               f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else ""),
               " / ".join(f"{v:.3f}" for v in entry["per_seed"].values()),
               "" if gap is None or entry["variant"] == "full" else f"{gap:+.3f}",
               entry["full_better_on"] or "", f"{entry[f'val_{key}']:.3f}"]
        if with_paper:
            row.append("" if entry.get("paper_mAP") is None else f"{entry['paper_mAP']:.2f}")
        lines.append(row + [entry["seconds"]])
    return markdown_table(header, lines)


def persons_per_split(manifest_dir: Path = DEFAULT_WORKSPACE.manifest_dir) -> dict[str, int]:
    """How many persons each split of the data the variants trained on holds (for the report)."""
    import pyarrow.parquet as pq

    return {split: pq.ParquetFile(Path(manifest_dir) / f"{split}.parquet").metadata.num_rows
            for split in ("train", "val", "test") if (Path(manifest_dir) / f"{split}.parquet").is_file()}


def write_report(markdown: str, table: list[dict[str, Any]], base: dict[str, Any], report_dir: Path,
                 persons: dict[str, int] | None = None) -> Path:
    """`<stem>.md` and `<stem>.json` in `report_dir` (stem from `output_names`); returns the .md."""
    params = params_from_dict(base)
    persons = persons or {}
    counts = f", {' / '.join(f'{n} {split}' for split, n in persons.items())} persons" if persons else ""
    _, stem = output_names(base)
    backbone = ("frozen (its maps computed once; BPA, BOA, ELD and the heads trained)"
                if params.train.frozen_backbone else "trained with the rest")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"{stem}.md").write_text(
        "# Ablations (paper Table 4) on the configured data\n\n"
        f"data: {params.data.root}, {params.data.kind}{counts}; backbone {params.model.rrla.backbone.name}: {backbone}; "
        f"{params.train.epochs} epochs.\n\n" + markdown + "\n\n"
        "Rows in the order of the paper's Table 4 columns. BOA 'equal weights': the top-N objects averaged "
        "(the paper's variants without BOA). test metric: mean over seeds ± sample standard deviation; "
        "gap to full: mean of the per-seed differences to the full model; full better on: seeds on which the "
        "full model scored higher; paper mAP: Table 4 (EMOTIC, ResNet-50, pretrained) where its text says which "
        "column is which.\n")
    (report_dir / f"{stem}.json").write_text(json.dumps(
        {"rows": table, "persons": persons, "params": params_to_dict(params)}, indent=2))
    return report_dir / f"{stem}.md"


def check_variants(variants: Iterable[str]) -> list[str]:
    variants = list(variants)
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown ablation {variant!r}; choose from {', '.join(VARIANTS)}")
    return variants


def run(base: dict[str, Any], variants: Iterable[str] = tuple(VARIANTS), seeds: Iterable[int] | None = None,
        out_root: Path = DEFAULT_WORKSPACE.ablations_dir, report_dir: Path = DEFAULT_WORKSPACE.reports_dir,
        reuse: bool = True, frozen_backbone: bool = False) -> dict[str, Any]:
    variants = check_variants(variants)
    base = with_backbone_mode(base, frozen_backbone)
    seeds = list(seeds) if seeds else [base.get("seed", 0)]
    out_root = Path(out_root) / output_names(base)[0]
    rows = [run_variant(base, v, out_root, seed, reuse=reuse) for seed in seeds for v in variants]
    markdown, table = comparison(rows)
    report = write_report(markdown, table, base, report_dir, persons=persons_per_split())
    return {"markdown": markdown, "rows": table, "report": str(report)}
