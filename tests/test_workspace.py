"""core/workspace.py: one object for every path, agreeing with what dvc.yaml declares."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support import REPO

from core.workspace import DEFAULT_WORKSPACE, LAYOUT, Workspace


def dvc_paths() -> set[str]:
    """Every output, metrics and plots path of every stage in dvc.yaml."""
    found = set()
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                found.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return found


def test_every_dvc_output_is_a_workspace_path_and_the_other_way_round():
    layout = {str(Path(relative)) for relative in LAYOUT.values()}
    declared = {str(Path(p)) for p in dvc_paths()}
    # a file a stage writes into one of the workspace's folders (graph/, reports/train/) counts as known
    unknown = sorted(p for p in declared if p not in layout and str(Path(p).parent) not in layout)
    assert unknown == [], "dvc.yaml names paths that core/workspace.py does not know"
    stage_outputs = ("manifest_dir", "labels_json", "detections_dir", "objects_dir", "model_dir", "thresholds_file",
                     "metrics_file", "details_file", "plots_dir", "ingest_metrics")
    missing = [name for name in stage_outputs if LAYOUT[name] not in declared]
    assert missing == [], "workspace entries that no dvc.yaml stage writes"
    for folder in ("graph_dir", "train_report_dir"):
        assert any(str(Path(p).parent) == LAYOUT[folder] for p in declared), folder


def test_entries_follow_the_root_and_one_can_move():
    ws = Workspace.at("/tmp/ws", data_root="raw/demo", model_dir="/elsewhere/model")
    assert ws.manifest_dir == Path("/tmp/ws/data/manifest")
    assert ws.data_root == Path("/tmp/ws/raw/demo")
    assert ws.model_dir == Path("/elsewhere/model")
    assert ws.objects_meta == Path("/tmp/ws/data/objects/train/meta.json")
    assert Workspace.at("/tmp/ws", data_root="/abs/data").data_root == Path("/abs/data")
    assert DEFAULT_WORKSPACE.metrics_file == Path("reports/metrics.json") and DEFAULT_WORKSPACE.data_root is None
    with pytest.raises(TypeError, match="no entry \\['model_dri'\\]"):
        Workspace.at("/tmp/ws", model_dri="x")


def test_resolved_and_string_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = Workspace.at(".", data_root="raw").moved(graph_dir="g")
    resolved = ws.resolved()
    assert resolved.graph_dir == tmp_path / "g" and resolved.root == tmp_path
    assert all(p is None or p.is_absolute() for p in resolved.as_dict().values())
    assert Workspace.from_strings(ws.to_strings()) == ws
