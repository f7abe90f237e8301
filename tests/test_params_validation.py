"""Every params value is checked once, on load, before any work: its type, range or choices, in one
line naming the key, the value and what is allowed; a broken params file is one line with its
file:line:column (issue #18, items 7 and 8)."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO
from typer.testing import CliRunner

from core.params import apply_overrides, params_from_dict
from models.config import ConfigError

# (dotted key, bad value, what the message must say is allowed)
BAD_VALUES = [
    # as the issue reported them
    ("model.rrla.boa.heads", "sixteen", "an int >= 1"),
    ("train.lr", -0.1, "a number > 0"),
    ("model.rrla.eld.t", 1.5, "a number in [0, 1]"),
    # a bool is no int, an int no bool
    ("data.verify_images", 1, "true or false"),
    ("model.rrla.boa.heads", True, "an int >= 1"),
    ("model.rrla.boa.dim", 128.0, "an int >= 1"),
    # choices
    ("train.optimizer", "rmsprop", "one of ['sgd', 'adam', 'adamw']"),
    ("detect.face_detector", "yolo", "one of ['mtcnn', 'haar']"),
    ("model.rrla.eld.propagation", "sideways", "one of ['as_written', 'transposed']"),
    ("model.sibnet.scm.cell", "transformer", "one of ['gru', 'rnn', 'lstm']"),
    ("train.use_gpu", "yes", "one of ['auto', true, false]"),
    ("model.rrla.backbone.name", "vgg16", "one of ['resnet50', 'resnet18', 'mobilenet_v2']"),
    # ranges
    ("train.batch_size", -32, "an int >= 1"),
    ("objects.num_actors", 0, "an int >= 1 or null"),
    ("model.kosti.dropout", 1.0, "a number in [0, 1)"),
    ("train.momentum", 1.0, "a number in [0, 1)"),
    ("model.rrla.boa.geometry_dim", 60, "an int >= 8 and a multiple of 8"),
    ("model.caernet.channels", [32, 64, 0, 256, 256], "a list of ints >= 1"),
    ("tune.reduction_factor", 1, "an int >= 2"),
]


def _load_with(repo_params_dict, dotted, value):
    return params_from_dict(apply_overrides(repo_params_dict, {dotted: value}))


@pytest.mark.parametrize("dotted, value, allowed", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(repo_params_dict, dotted, value, allowed):
    with pytest.raises(ConfigError) as info:
        _load_with(repo_params_dict, dotted, value)
    message = str(info.value)
    assert message.startswith(f"{dotted} must be {allowed}"), message
    assert f"got {value!r}" in message and "\n" not in message


@pytest.mark.parametrize("dotted, value, kind", [
    ("model.rrla.boa.heads", "sixteen", "str"), ("data.verify_images", 1, "int"),
    ("model.rrla.boa.heads", True, "bool"),
])
def test_a_value_of_the_wrong_type_says_its_type(repo_params_dict, dotted, value, kind):
    with pytest.raises(ConfigError, match=rf"got {value!r} \({kind}\)$"):
        _load_with(repo_params_dict, dotted, value)


def test_a_model_families_own_train_values_are_checked_too(repo_params_dict):
    with pytest.raises(ConfigError, match=r"^model\.kosti\.train\.lr must be a number > 0, got 0$"):
        _load_with(repo_params_dict, "model.kosti.train.lr", 0)
    with pytest.raises(ConfigError, match=r"^model\.caernet\.train\.batch_size must be an int >= 1, got '32' \(str\)$"):
        _load_with(repo_params_dict, "model.caernet.train.batch_size", "32")


def test_an_exponent_without_a_dot_is_text_to_yaml_and_the_message_says_so(repo_params_dict):
    value = yaml.safe_load("lr: 1e-3")["lr"]  # YAML 1.1: no dot, no float
    with pytest.raises(ConfigError, match=r"train\.lr must be a number > 0, got '1e-3' \(str\).*1\.0e-3"):
        _load_with(repo_params_dict, "train.lr", value)


def test_ints_for_floats_null_for_optionals_and_the_edges_of_each_range_load(repo_params_dict):
    params = params_from_dict(apply_overrides(repo_params_dict, {
        "train.lr": 1, "train.weight_decay": 0, "train.backbone_lr": None, "model.rrla.eld.t": 1.0,
        "model.rrla.eld.p": 0, "objects.num_actors": None, "train.use_gpu": False, "model.rrla.boa.max_objects": 0,
    }))
    assert params.train.lr == 1 and params.model.rrla.eld.t == 1.0 and params.train.use_gpu is False


def test_every_choice_list_agrees_with_the_code_that_reads_it():
    # the choices are declared beside the fields (torch-free); the modules that act on them hold their own
    import core.params as p
    from core.detection.faces import FACE_DETECTORS
    from core.features.objects import SUPPORTED_DETECTORS
    from core.graph.embeddings import SOURCES
    from core.training.body_cache import DTYPES
    from models import config, eld, rrla
    from models.backbones import available_backbones
    from models.losses import LOSS_NAMES
    from pipelines.sweep.driver import SEARCHERS

    assert set(p.FACE_DETECTORS) == set(FACE_DETECTORS) and set(p.OBJECT_DETECTORS) == set(SUPPORTED_DETECTORS)
    assert set(p.EMBEDDING_SOURCES) == set(SOURCES) and set(p.CACHE_DTYPES) == set(DTYPES)
    assert set(p.TRAIN_LOSSES) == set(LOSS_NAMES) and set(p.SEARCHERS) == set(SEARCHERS)
    assert set(config.BACKBONES) == set(available_backbones()) and set(config.PERSON_VIEWS) == set(rrla.PERSON_VIEWS)
    assert set(config.ELD_PROPAGATIONS) == set(eld.PROPAGATIONS) and set(config.ELD_ACTIVATIONS) == set(eld.ACTIVATIONS)


# --------------------------------------------------------------------------- ctxemo configure


def _workspace(tmp_path: Path) -> Path:
    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    return params_file


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("override, key", [
    ("model: {rrla: {boa: {heads: sixteen}}}", "model.rrla.boa.heads"),
    ("train: {lr: -0.1}", "train.lr"),
    ("model: {rrla: {eld: {t: 1.5}}}", "model.rrla.eld.t"),
])
def test_configure_refuses_a_bad_value_in_one_line_and_leaves_params_untouched(tmp_path, override, key):
    from pipelines.cli import app

    params_file = _workspace(tmp_path)
    before = params_file.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(override + "\n")
    result = CliRunner().invoke(app, ["configure", str(bad), "--params", str(params_file)])
    assert result.exit_code == 2, result.output
    assert _one_line(result.stderr).startswith(f"error: {key} must be ")
    assert params_file.read_text() == before and not (tmp_path / "params.yaml.bak").exists()


# --------------------------------------------------------------------------- a broken params.yaml


def _break_yaml(params_file: Path) -> str:
    """Writes a YAML syntax error into `params_file`; returns its 'line:column' (1-based)."""
    lines = params_file.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("  optimizer: sgd"))
    lines[row] = "  optimizer: sgd: adam"
    params_file.write_text("\n".join(lines) + "\n")
    return f"{row + 1}:{lines[row].index(': adam') + 1}"


def test_a_yaml_error_is_one_line_with_file_line_and_column_from_the_train_stage(tmp_path):
    where = _break_yaml(_workspace(tmp_path))
    done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=tmp_path, capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith(f"train: error: params.yaml:{where}: ") and "mapping values are not allowed" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing started, nothing written


@pytest.mark.parametrize("command", [["configure", "{overrides}"], ["synth"], ["promote", "--dry-run"], ["diagnose"],
                                     ["sweep"], ["ablate"], ["retrain"], ["ablate-flow"], ["demo"], ["compare"]])
def test_a_yaml_error_is_one_line_with_file_line_and_column_from_the_cli(tmp_path, monkeypatch, command):
    from pipelines.cli import app

    params_file = _workspace(tmp_path)
    where = _break_yaml(params_file)
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("train: {lr: 0.01}\n")
    monkeypatch.chdir(tmp_path)  # demo, compare, retrain: the workspace's own params.yaml
    args = [a.replace("{overrides}", str(overrides)) for a in command]
    if command[0] not in ("demo", "compare", "retrain"):
        args += ["--params", str(params_file)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    line = _one_line(result.stderr)
    assert f"params.yaml:{where}: " in line and "mapping values are not allowed" in line, line


# --------------------------------------------------------------------------- every stage's main()


# the stages that read params.yaml, with their arguments (cooccurrence reads none)
STAGE_ARGS = {"ingest": ["--params", "params.yaml"], "detect": ["--params", "params.yaml"],
              "objects": ["--params", "params.yaml"], "embeddings": ["--params", "params.yaml"],
              "train": [], "evaluate": [], "compare": ["kosti"], "compare_report": []}


def _unknown_nested_key(params_file: Path) -> str:
    data = yaml.safe_load(params_file.read_text())
    data["model"]["rrla"]["boa"]["head"] = 16
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return "model.rrla.boa: unknown key(s) ['head']"


def _bad_type(params_file: Path) -> str:
    data = yaml.safe_load(params_file.read_text())
    data["model"]["rrla"]["boa"]["heads"] = "sixteen"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return "model.rrla.boa.heads must be an int >= 1, got 'sixteen' (str)"


def _syntax_error(params_file: Path) -> str:
    return f"params.yaml:{_break_yaml(params_file)}: "


@pytest.mark.parametrize("spoil", [_unknown_nested_key, _bad_type, _syntax_error])
@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_every_stage_stops_on_bad_params_with_status_2_and_one_line(tmp_path, monkeypatch, capsys, stage, spoil):
    expected = spoil(_workspace(tmp_path))
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"stages.{stage}").main
    try:
        code = main(STAGE_ARGS[stage])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    line = _one_line(err)
    assert line.startswith(f"{stage}: error: ") and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # stopped before any work
