"""The `ctxemo` command itself: its version and the promises its messages make."""
from __future__ import annotations

import importlib.metadata

from typer.testing import CliRunner

from pipelines.cli import app


def test_version_prints_the_installed_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ctxemo {importlib.metadata.version('ctxemo')}"
