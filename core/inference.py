"""Loading a trained model package and scoring persons: shared by train, evaluate and predict."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import checkpoints
from core.errors import UserError

PACKAGE_KEYS = ("spec", "state_dict", "classes", "task", "params")  # what export_best writes and loading needs


@dataclass
class ModelPackage:
    """A trained model with everything needed to use it the way it was trained."""

    model: Any                  # torch.nn.Module in eval mode
    classes: list[str]
    task: str                   # multilabel | multiclass
    params: dict[str, Any]      # the frozen params.yaml the model was trained with
    thresholds: np.ndarray | None = None

    @property
    def model_name(self) -> str:
        return self.model.family


def load_model_package(model_dir: Path, thresholds_file: Path | None = None) -> ModelPackage:
    import torch

    from models import model_from_checkpoint

    checkpoint = Path(model_dir) / "model.pt"
    if not checkpoint.is_file():
        raise UserError(f"no trained model at {checkpoint}: run the train stage (dvc repro train) first")
    state = checkpoints.load(checkpoint, what="model file")
    missing = [key for key in PACKAGE_KEYS if key not in state]
    if missing:  # e.g. a Ray Train checkpoint.pt, or another tool's weights, given as a model
        raise UserError(f"{checkpoint}: not a ctxemo model package: no {', '.join(missing)} "
                        f"(the train stage exports one to artifacts/model: `dvc repro train`)")
    model = model_from_checkpoint(state["spec"], state["state_dict"]).eval()
    if state["params"].get("train", {}).get("channels_last"):  # scored in the layout it trained in
        model = model.to(memory_format=torch.channels_last)
    thresholds = None
    if thresholds_file is not None and Path(thresholds_file).is_file():
        values = json.loads(Path(thresholds_file).read_text())["thresholds"]
        if values is not None:  # single-label models predict the argmax and have none
            # null = a class with no val positives: never predicted
            thresholds = np.array([np.inf if v is None else v for v in values], dtype=np.float32)
    return ModelPackage(model=model, classes=list(state["classes"]), task=state["task"],
                        params=state["params"], thresholds=thresholds)


def predict_loader(model, loader, device="cpu", with_attention: bool = False, with_continuous: bool = False):
    """Scores (optionally the attention weights and the VAD predictions) for every item a loader yields.

    Returns (dataset indices, scores[, attention][, continuous]) in loader order; attention or
    continuous is None when the model gives none.
    """
    import torch

    from core.data.dataset import model_inputs

    model.eval()
    indices, scores, attention, continuous = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            out = model(model_inputs(model, batch, device))
            scores.append(out.logits.float().cpu().numpy())
            indices.append(batch["index"].numpy())
            attention.append(None if out.attention is None else out.attention.float().cpu().numpy())
            continuous.append(None if out.continuous is None else out.continuous.float().cpu().numpy())
    result = (np.concatenate(indices), np.concatenate(scores))
    if with_attention:
        result += (None if any(a is None for a in attention) else np.concatenate(attention),)
    if with_continuous:
        result += (None if any(c is None for c in continuous) else np.concatenate(continuous),)
    return result


def bottom_up_people(package_or_model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The people a model that finds them itself (`model.finds_people`, BENet) sees in `rgb`: (boxes [K,4] in
    its pixels, detection scores [K], emotion scores [K,E] as predict_loader gives them); core/bottom_up.py."""
    from core.bottom_up import bottom_up_people as found_by_the_model

    return found_by_the_model(package_or_model, rgb)
