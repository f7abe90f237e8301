"""The `ctxemo` command itself: its version and the promises its messages make."""
from __future__ import annotations

import importlib.metadata

from typer.testing import CliRunner

from pipelines.cli import app


def test_version_prints_the_installed_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ctxemo {importlib.metadata.version('ctxemo')}"


def test_predict_says_when_people_came_from_the_weak_fallback_detector():
    from pipelines import predict

    assert predict.people_notice([{"people_source": "given"}, {"people_source": "fasterrcnn_resnet50_fpn"}]) is None
    notice = predict.people_notice([{"people_source": "given"}, {"people_source": "hog"}])
    assert "HOG" in notice and "1 of 3" in notice and "--box" in notice and "objects.weights" in notice
