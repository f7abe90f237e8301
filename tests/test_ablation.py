"""`ctxemo ablate`: variants x seeds trained by the real training stage, and the comparison table."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.factory import build_model
from pipelines import ablation


def _row(variant: str, seed: int, test: float, val: float = 0.5, seconds: float = 10.0) -> dict:
    return {"variant": variant, "seed": seed, "seconds": seconds,
            "test": {"task": "multilabel", "mAP": test, "val_mAP": val, "c_f1": 0.1, "o_f1": 0.2, "baseline_mAP": 0.05}}


def test_comparison_pairs_seeds_and_counts_where_the_full_model_wins():
    rows = [_row("full", 0, 0.30), _row("full", 1, 0.34), _row("full", 2, 0.32),
            _row("no_eld", 0, 0.28), _row("no_eld", 1, 0.36), _row("no_eld", 2, 0.29)]
    markdown, table = ablation.comparison(rows)
    no_eld, full = table  # the paper's column order: the full model last
    assert full["variant"] == "full" and full["seeds"] == 3
    assert full["test_mAP"] == pytest.approx(0.32)
    assert full["test_mAP_std"] == pytest.approx(0.02)  # sample std of 0.30, 0.34, 0.32
    assert full["delta_vs_full"] == 0.0 and full["full_better_on"] is None
    # paired by seed: -0.02, +0.02, -0.03
    assert no_eld["delta_vs_full"] == pytest.approx(-0.01)
    assert no_eld["full_better_on"] == "2/3"
    assert no_eld["per_seed"] == {"0": 0.28, "1": 0.36, "2": 0.29}
    assert markdown.splitlines()[0].startswith("| variant | BOA | BPA | ELD | geometry | backbone | test mAP (mean ± std) |")
    assert "| full |" in markdown and "0.320 ± 0.020 | 0.300 / 0.340 / 0.320 |" in markdown
    assert "| -0.010 | 2/3 |" in markdown  # no_eld's paired gap and wins of the full model


def test_rows_follow_the_papers_column_order_whatever_order_they_ran_in():
    rows = [_row(v, 0, 0.2 + 0.01 * i) for i, v in enumerate(reversed(list(ablation.VARIANTS)))]
    markdown, table = ablation.comparison(rows)
    assert [e["variant"] for e in table] == list(ablation.VARIANTS)
    assert [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines()[2:]] == list(ablation.VARIANTS)
    assert table[0]["paper_mAP"] == 27.11 and table[-1]["paper_mAP"] == 32.41
    assert {e["variant"] for e in table if e["paper_mAP"] is None} == {"eld_only", "no_bpa", "no_boa"}


def test_every_table4_variant_has_the_modules_it_names(repo_params_dict):
    expected = {  # BOA, BPA, ELD, geometry, backbone: the paper's Table 4 columns
        "baseline": ("equal weights", False, False, False, "resnet18"),
        "bpa_only": ("equal weights", True, False, False, "resnet18"),
        "boa_only": ("attention", False, False, True, "resnet18"),
        "eld_only": ("equal weights", False, True, False, "resnet18"),
        "no_eld": ("attention", True, False, True, "resnet18"),
        "no_bpa": ("attention", False, True, True, "resnet18"),
        "no_boa": ("equal weights", True, True, False, "resnet18"),
        "no_geometry": ("attention", True, True, False, "resnet18"),
        "mobilenet_v2": ("attention", True, True, True, "mobilenet_v2"),
        "full": ("attention", True, True, True, "resnet18"),
    }
    assert list(expected) == list(ablation.VARIANTS)
    for variant, (boa, bpa, eld, geometry, backbone) in expected.items():
        got = ablation.modules(ablation.variant_params(repo_params_dict, variant, seed=0))
        assert got == {"BOA": boa, "BPA": bpa, "ELD": eld, "geometry": geometry, "backbone": backbone}, variant


def test_each_variants_model_loads_the_full_models_weights_except_its_switched_parts(repo_params_dict):
    # what a switch removes or replaces, as state_dict key prefixes
    switched = {"bpa": ("bpa.",), "boa": ("boa.",), "eld": ("eld.", "classifier."), "geometry": ("boa.geometry_gate.",),
                "backbone": ("backbone.", "body_proj.", "bpa.")}  # BPA's SE block is as wide as the trunk's output
    parts = {"baseline": ("bpa", "boa", "eld"), "bpa_only": ("boa", "eld"), "boa_only": ("bpa", "eld"),
             "eld_only": ("boa", "bpa"), "no_eld": ("eld",), "no_bpa": ("bpa",), "no_boa": ("boa",),
             "no_geometry": ("geometry",), "mobilenet_v2": ("backbone",), "full": ()}
    rng = np.random.default_rng(0)
    graph = {"cooccurrence": rng.random((26, 26)).astype(np.float32), "label_embeddings": rng.random((26, 8))}

    def build(variant):
        cfg = ablation.variant_params(repo_params_dict, variant, seed=0).model.rrla
        return build_model("rrla", cfg, num_classes=26, task="multilabel", load_pretrained=False, **graph)

    full = build("full").state_dict()
    for variant, names in parts.items():
        model = build(variant)
        own = model.state_dict()
        reshaped = {k for k in own.keys() & full.keys() if own[k].shape != full[k].shape}
        shared = {k: v for k, v in full.items() if k in own and k not in reshaped}
        result = model.load_state_dict(shared, strict=False)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in shared.items())
        differing = set(result.missing_keys) | (full.keys() - own.keys()) | reshaped
        allowed = tuple(prefix for name in names for prefix in switched[name])
        stray = sorted(k for k in differing if not k.startswith(allowed))
        assert stray == [], (variant, stray)
        assert bool(differing) == bool(names), variant


def test_the_cli_lists_every_variant():
    from pipelines.cli import VARIANT_HELP

    assert VARIANT_HELP.split(": ", 1)[1].split(", ") == list(ablation.VARIANTS)


def test_one_seed_has_no_spread_and_a_missing_full_model_has_no_gap():
    _, table = ablation.comparison([_row("no_boa", 0, 0.2)])
    assert table[0]["test_mAP_std"] is None and table[0]["delta_vs_full"] is None
    assert table[0]["full_better_on"] is None


def test_unknown_variant_is_rejected_before_any_training():
    with pytest.raises(ValueError, match="unknown ablation 'no_such'; choose from baseline, bpa_only.*mobilenet_v2, full"):
        ablation.run({"seed": 0}, ["full", "no_such"])


def test_two_variants_two_seeds_train_evaluate_and_report(tiny_workspace, ray_local, mlflow_store, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(tiny_workspace.root)
    base = dict(tiny_workspace.params_dict, train={**tiny_workspace.params_dict["train"], "epochs": 1})
    result = ablation.run(base, ["full", "no_boa"], seeds=[0, 1], out_root=tmp_path / "abl",
                          report_dir=tmp_path / "reports")
    rows = {row["variant"]: row for row in result["rows"]}
    for variant in ("full", "no_boa"):
        per_seed = {seed: json.loads((tmp_path / f"abl/{variant}/seed{seed}/metrics.json").read_text())["mAP"]
                    for seed in (0, 1)}
        assert rows[variant]["per_seed"] == {"0": per_seed[0], "1": per_seed[1]}
        assert rows[variant]["test_mAP"] == pytest.approx((per_seed[0] + per_seed[1]) / 2)
    assert rows["no_boa"]["delta_vs_full"] == pytest.approx(rows["no_boa"]["test_mAP"] - rows["full"]["test_mAP"])
    # different seeds really train different models
    assert rows["full"]["per_seed"]["0"] != rows["full"]["per_seed"]["1"]
    report = json.loads((tmp_path / "reports/ablations.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["no_boa", "full"]  # the paper's column order
    assert rows["no_boa"]["modules"] == {"BOA": "equal weights", "geometry": False, "BPA": True, "ELD": True,
                                         "backbone": "resnet18"}
    assert "| full | attention | ✓ | ✓ | ✓ | resnet18 |" in (tmp_path / "reports/ablations.md").read_text()

    # a second call with the same params and data trains nothing: every run is read back
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").rglob("model.pt")}
    again = ablation.run(base, ["full", "no_boa"], seeds=[0, 1], out_root=tmp_path / "abl",
                         report_dir=tmp_path / "reports")
    assert again["rows"] == result["rows"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").rglob("model.pt")} == before
    assert "reusing" in capsys.readouterr().out


def test_the_fingerprint_of_a_finished_run_follows_params_and_data(tiny_workspace, tmp_path):
    paths = tiny_workspace.train_paths("fingerprint")
    params = ablation.variant_params(tiny_workspace.params_dict, "full", seed=0)
    reference = ablation.inputs_fingerprint(params, paths)
    assert ablation.inputs_fingerprint(ablation.variant_params(tiny_workspace.params_dict, "full", seed=0),
                                       paths) == reference
    assert ablation.inputs_fingerprint(ablation.variant_params(tiny_workspace.params_dict, "full", seed=1),
                                       paths) != reference
    assert ablation.inputs_fingerprint(ablation.variant_params(tiny_workspace.params_dict, "no_eld", seed=0),
                                       paths) != reference
    # other label-graph contents (same file names) are other inputs
    graph = tmp_path / "graph"
    graph.mkdir()
    for file in paths.graph_dir.iterdir():
        (graph / file.name).write_bytes(file.read_bytes())
    copied = paths.moved(graph_dir=graph)
    assert ablation.inputs_fingerprint(params, copied) == reference
    (graph / "cooccurrence.npy").write_bytes(b"changed")
    assert ablation.inputs_fingerprint(params, copied) != reference


def test_the_code_fingerprint_covers_the_model_and_stage_sources(monkeypatch):
    from pathlib import Path

    reference = ablation.code_fingerprint()
    assert ablation.code_fingerprint() == reference
    original = Path.read_bytes

    def edited(path):  # models/rrla.py as if someone had changed a line
        data = original(path)
        return data + b"# edit" if path.name == "rrla.py" else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert ablation.code_fingerprint() != reference


def test_frozen_backbone_ablations_keep_their_own_runs_and_report(tiny_workspace, ray_local, mlflow_store, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tiny_workspace.root)
    base = dict(tiny_workspace.params_dict, train={**tiny_workspace.params_dict["train"], "epochs": 1})
    assert ablation.output_names(base) == ("", "ablations")
    result = ablation.run(base, ["full", "no_bpa"], seeds=[0], out_root=tmp_path / "abl",
                          report_dir=tmp_path / "reports", frozen_backbone=True)

    assert result["report"] == str(tmp_path / "reports/ablations_frozen_backbone.md")
    for variant in ("full", "no_bpa"):
        finished = json.loads((tmp_path / f"abl/frozen_backbone/{variant}/seed0/result.json").read_text())
        params = finished["row"]["train"]
        assert 0.0 <= finished["row"]["test"]["mAP"] <= 1.0 and params["epochs"] == 1
    report = json.loads((tmp_path / "reports/ablations_frozen_backbone.json").read_text())
    assert report["params"]["train"]["frozen_backbone"] is True and report["params"]["train"]["loader_workers"] == 0
    header = (tmp_path / "reports/ablations_frozen_backbone.md").read_text().splitlines()[2]
    assert "backbone resnet18: frozen" in header
    manifests = tiny_workspace.data / "manifest"
    counts = {split: len(pq.read_table(manifests / f"{split}.parquet")) for split in ("train", "val", "test")}
    assert report["persons"] == counts and f"{counts['train']} train / {counts['val']} val / {counts['test']} test persons" in header
    # the trained-backbone report and runs are untouched
    assert not (tmp_path / "reports/ablations.md").exists() and not (tmp_path / "abl/full").exists()
    # the variants shared one set of cached maps (same seed, same backbone)
    assert len(list((tiny_workspace.root / "data/cache/body").glob("*/train.body.npy"))) == 1
