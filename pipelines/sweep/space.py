"""The sweep's search space: `tune.space.<model>` in params.yaml as Ray Tune domains, checked against Params.

`tune.space` holds one space per model family; the sweep searches the one of `model.name`
(`model_space`). A space maps dotted paths into the existing params (`model.rrla.boa.heads`) to one distribution
each (choice, uniform, loguniform, randint), never a repeated default: the defaults stay in
their own sections. A path must be a field of the typed params; paths a trial cannot change
are refused here, before anything runs: the objects stage and the tune section are not rerun
per trial, and with `tune.frozen_backbone` the cached trunk outputs fix the trunks, the views
they read, the data and the seed. `nested` turns sampled dotted values back into params.yaml's shape.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ray import tune

from core.errors import UserError
from core.params import Params
from core.training import body_cache

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
# Never searchable: they would change the stored objects. With tune.frozen_backbone, what changes
# the cached trunk outputs is refused too (core/training/body_cache.py `cache_paths`, per family).
FIXED_PREFIXES = ("objects.", "tune.")


def field_at(params: Params, dotted: str) -> Any:
    """The value at `dotted` in the typed params, or UserError naming the first unknown part."""
    node: Any = params
    walked = []
    for key in dotted.split("."):
        if isinstance(node, dict) and key in node:  # a mapping of typed entries: a model's views
            node = node[key]
        elif dataclasses.is_dataclass(node) and key in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, key)
        else:
            where = ".".join(walked) or "params"
            hint = "; a model's settings are under model.<name>, e.g. model.rrla.*" if walked == ["model"] else ""
            raise UserError(f"tune.space: {dotted!r} is not a params path ({where} has no {key!r}{hint})")
        walked.append(key)
    if dataclasses.is_dataclass(node) or isinstance(node, dict):
        raise UserError(f"tune.space: {dotted!r} is a whole section; name one of its keys")
    return node


def _domain(dotted: str, spec: Any):
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"tune.space.{dotted}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise UserError(f"tune.space.{dotted}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"tune.space.{dotted}: choice needs a non-empty list")
        return tune.choice(args)
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(v, (int, float)) for v in args)
            and args[0] < args[1]):
        raise UserError(f"tune.space.{dotted}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise UserError(f"tune.space.{dotted}: loguniform needs low > 0, got {args[0]}")
    if kind == "randint":
        return tune.randint(int(args[0]), int(args[1]))
    return getattr(tune, kind)(float(args[0]), float(args[1]))


def model_space(params: Params) -> dict[str, Any]:
    """The search space of the model the sweep trains: `tune.space.<model.name>`."""
    name = params.model.name
    spaces = params.tune.space
    if not isinstance(spaces, dict) or any("." in k or not isinstance(v, dict) for k, v in spaces.items()):
        raise UserError("tune.space must map each model name to its space, e.g. tune.space.rrla: "
                        "{model.rrla.boa.heads: {choice: [4, 8]}}")
    if name not in spaces:
        raise UserError(f"tune.space has no space for model {name!r} (model.name); spaces are given for "
                        f"{sorted(spaces)}: add tune.space.{name}: {{<dotted path>: <distribution>}}")
    if not spaces[name]:
        raise UserError(f"tune.space.{name} in params.yaml is empty: nothing to search")
    return spaces[name]


def build_space(params: Params) -> dict[str, Any]:
    """`tune.space.<model.name>` as Ray Tune domains, keyed by dotted path; every path checked against Params."""
    space = model_space(params)
    domains = {}
    for dotted, spec in space.items():
        if dotted == "train.epochs":
            raise UserError("tune.space: 'train.epochs' cannot be searched: a trial's epochs are tune.max_epochs "
                            "and ASHA decides how many of them it gets")
        if dotted.startswith(FIXED_PREFIXES):
            raise UserError(f"tune.space: {dotted!r} cannot be searched by a sweep (the objects stage and the "
                            "tune section are not rerun per trial); search N with model.rrla.boa.max_objects")
        if params.tune.frozen_backbone and dotted.startswith(body_cache.cache_paths(params)):
            raise UserError(f"tune.space: {dotted!r} changes the cached body maps; it cannot be searched with "
                            "tune.frozen_backbone: true")
        field_at(params, dotted)
        if dotted.startswith("model.") and not dotted.startswith(f"model.{params.model.name}."):
            raise UserError(f"tune.space: {dotted!r} is not a setting of the model the sweep trains "
                            f"(model.name: {params.model.name}); search model.{params.model.name}.* paths")
        own_train = params.model.config.train
        if dotted.startswith("train.") and dotted[len("train."):] in own_train:
            raise UserError(f"tune.space: {dotted!r} is set by model.{params.model.name}.train, which wins over "
                            f"the train section; remove it there to search it")
        domains[dotted] = _domain(dotted, spec)
    return domains


def check_object_prefix(params: Params, objects_dir: Path) -> None:
    """N values beyond the stored top-N would all read the same objects: refuse them."""
    meta_path = Path(objects_dir) / "train" / "meta.json"
    spec = model_space(params).get("model.rrla.boa.max_objects") if params.model.name == "rrla" else None
    if spec is None or not meta_path.is_file():
        return
    stored = int(json.loads(meta_path.read_text())["top_n"])
    values = next(iter(spec.values())) if isinstance(spec, dict) else []
    too_big = [v for v in (values if isinstance(values, list) else []) if v is not None and v > stored]
    if too_big:
        raise UserError(f"tune.space.model.rrla.boa.max_objects offers {too_big} but the objects stage stored only "
                        f"{stored} per person (objects.top_n): raise objects.top_n and rerun it, or lower N")


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'model.rrla.boa.heads': 8} -> {'model': {'boa': {'heads': 8}}}."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def native(value: Any, like: Any) -> Any:
    """Plain Python value (YAML/JSON-safe), of the type the params default has."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(like, bool) or isinstance(value, bool):
        return bool(value)
    if isinstance(like, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value
