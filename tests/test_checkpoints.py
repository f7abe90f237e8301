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
