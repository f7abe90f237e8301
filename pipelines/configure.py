"""Apply a config file of overrides (configs/*.yaml) to params.yaml, strictly.

Keys are nested like params.yaml; each must already exist there (a typo is an error, not a
new key), and the merged file must still parse into the typed configs. Comments elsewhere
in params.yaml are lost on write (PyYAML), so the original is kept as params.yaml.bak.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from core.params import apply_overrides, params_from_dict, read_yaml
from core.tracking import flatten
from models.config import ConfigError


def merge_config(params_file: Path, overrides_file: Path, write: bool = True) -> dict[str, tuple[Any, Any]]:
    base = read_yaml(params_file)
    overrides = dict(flatten(read_yaml(overrides_file)))
    merged = apply_overrides(base, overrides)
    params_from_dict(merged)  # raises ConfigError naming the bad key
    old = dict(flatten(base))
    changes = {k: (old.get(k), v) for k, v in overrides.items() if old.get(k) != v}
    if write and changes:
        shutil.copy(params_file, Path(str(params_file) + ".bak"))
        Path(params_file).write_text(yaml.safe_dump(merged, sort_keys=False))
    return changes


__all__ = ["merge_config", "ConfigError"]
