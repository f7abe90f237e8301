"""Checkpoints are read with torch's weights-only unpickler: a crafted model file cannot run code (#18)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import checkpoints
from core.errors import UserError


class RunsAShellCommand:
    """What an attacker pickles: unpickling calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _crafted_model_folder(tmp_path: Path, proof: Path) -> Path:
    folder = tmp_path / "downloaded-model"
    (folder / "model").mkdir(parents=True)
    torch.save({"state_dict": RunsAShellCommand(f"echo pwned > {proof}")}, folder / "model" / "model.pt")
    return folder


def test_predict_with_a_crafted_model_file_refuses_it_and_runs_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    proof = tmp_path / "pwned.txt"
    folder = _crafted_model_folder(tmp_path, proof)
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (120, 80, 40)).save(image)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["predict", str(image), "--box", "4,4,40,60", "--model", str(folder)])
    assert result.exit_code != 0
    assert "refused" in result.output and "nothing in it was run" in result.output, result.output
    assert not proof.exists()


def test_the_loader_refuses_code_before_running_it(tmp_path):
    proof = tmp_path / "pwned.txt"
    folder = _crafted_model_folder(tmp_path, proof)
    with pytest.raises(UserError, match=r"model file .*model\.pt: refused"):
        checkpoints.load(folder / "model" / "model.pt", what="model file")
    assert not proof.exists()
    # the unsafe reading of the same file would have run it: the test's proof is real
    torch.load(folder / "model" / "model.pt", weights_only=False)
    assert proof.read_text().strip() == "pwned"


def test_what_ctxemo_saves_is_plain_and_loads_back_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3, "base_lr": 1e-3}])
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = checkpoints.plain({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "best": np.float64(0.25), "history": [{"val_map": np.float32(0.5), "epoch": np.int64(3)}],
                               "counts": np.array([1, 2])})
    assert type(state["best"]) is float and type(state["history"][0]["epoch"]) is int and state["counts"] == [1, 2]
    torch.save(state, tmp_path / "checkpoint.pt")
    loaded = checkpoints.load(tmp_path / "checkpoint.pt")
    assert torch.equal(loaded["model"]["weight"], model.state_dict()["weight"]) and loaded["best"] == 0.25
    fresh = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3, "base_lr": 1e-3}])
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]


def test_a_file_that_is_not_a_dict_is_a_clear_error(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="expected a dict"):
        checkpoints.load(tmp_path / "list.pt")


# --------------------------------------------------------------------------- damaged files (#18, item 9)

def _real_model_bytes(tmp_path: Path) -> bytes:
    """The bytes of a model file shaped like the one the train stage exports."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 26))
    torch.save({"state_dict": model.state_dict(), "spec": {"name": "rrla"}, "classes": [f"c{i}" for i in range(26)],
                "task": "multilabel", "params": {"seed": 0}, "epoch": 1, "metric": {"val_map": 0.25}},
               tmp_path / "real.pt")
    return (tmp_path / "real.pt").read_bytes()


DAMAGE = {
    "first half": lambda data: data[: len(data) // 2],
    "last bytes cut": lambda data: data[:-10],
    "empty": lambda data: b"",
    "zeroed header": lambda data: data[:200] + bytes(100) + data[300:],
    "not a checkpoint": lambda data: b"hello world" * 10,
    "a git-lfs pointer": lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 123\n",
}


def _damaged_model_dir(tmp_path: Path, damage: str = "first half") -> Path:
    folder = tmp_path / "artifacts" / "model"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(DAMAGE[damage](_real_model_bytes(tmp_path)))
    return folder


def _one_line_error_naming(message: str, path: Path) -> None:
    assert len(message.strip().splitlines()) == 1, message
    assert "Traceback" not in message
    assert str(path) in message and "truncated or corrupt" in message
    assert "dvc repro train" in message and "dvc checkout" in message


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_model_file_is_one_clear_error(tmp_path, damage):
    folder = _damaged_model_dir(tmp_path, damage)
    with pytest.raises(UserError) as raised:
        checkpoints.load(folder / "model.pt", what="model file")
    _one_line_error_naming(str(raised.value), folder / "model.pt")
    assert "refused" not in str(raised.value)  # damaged, not tampered with


def test_predict_with_a_truncated_model_file_prints_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    folder = _damaged_model_dir(tmp_path)
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (120, 80, 40)).save(image)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["predict", str(image), "--box", "4,4,40,60", "--model", str(folder)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    _one_line_error_naming(result.output.removeprefix("error: "), folder / "model.pt")


def test_the_evaluate_stage_with_a_truncated_model_file_prints_one_line(tmp_path, monkeypatch, capsys):
    import shutil

    from support import REPO

    from stages import evaluate

    folder = _damaged_model_dir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert evaluate.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error: ")
    _one_line_error_naming(err, Path("artifacts/model/model.pt"))
    assert (folder / "model.pt").stat().st_size > 0  # nothing deleted or rewritten


def test_a_model_file_without_the_package_keys_is_a_clear_error(tmp_path):
    from core.inference import load_model_package

    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "epoch": 0}, tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"model\.pt: not a ctxemo model package: no .*spec"):
        load_model_package(tmp_path)
