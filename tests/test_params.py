"""params.yaml is the one home of every setting: it must parse strictly and round-trip."""
import pytest
from support import repo_params

from core.params import apply_overrides, params_from_dict, params_to_dict
from models.config import ConfigError, ModelConfig, from_dict, replace_path, to_dict


def test_repo_params_parse_into_typed_configs(repo_params_dict):
    params = params_from_dict(repo_params_dict)
    assert params.model.boa.heads == repo_params_dict["model"]["boa"]["heads"]
    assert params.model.backbone.input_size == repo_params_dict["model"]["backbone"]["input_size"]
    assert params.train.epochs == repo_params_dict["train"]["epochs"]


def test_every_params_key_is_known_to_the_typed_config(repo_params_dict):
    # to_dict(from_dict(x)) keeps every key: nothing in params.yaml is silently ignored
    round_trip = params_to_dict(params_from_dict(repo_params_dict))

    def keys(tree, prefix=""):
        for k, v in tree.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and k != "tune":
                yield from keys(v, path)
            else:
                yield path

    assert set(keys(repo_params_dict)) <= set(keys(round_trip))


def test_unknown_key_is_an_error_naming_its_path(repo_params_dict):
    repo_params_dict["model"]["boa"]["headz"] = 4
    with pytest.raises(ConfigError, match=r"model\.boa: unknown key\(s\) \['headz'\]"):
        params_from_dict(repo_params_dict)


def test_model_config_round_trips_through_a_dict():
    cfg = replace_path(repo_params().model, "boa.heads", 4)
    again = from_dict(ModelConfig, to_dict(cfg))
    assert again == cfg and again.boa.heads == 4 and again.eld == repo_params().model.eld


def test_overrides_apply_dotted_paths_and_reject_typos(repo_params_dict):
    changed = apply_overrides(repo_params_dict, {"model.eld.p": 0.7, "train.lr": 0.05})
    assert changed["model"]["eld"]["p"] == 0.7 and changed["train"]["lr"] == 0.05
    assert repo_params_dict["model"]["eld"]["p"] == 0.2, "the input dict must stay untouched"
    with pytest.raises(ConfigError, match="model.eld.q"):
        apply_overrides(repo_params_dict, {"model.eld.q": 1})


@pytest.mark.parametrize("config", ["paper-emotic.yaml", "caers.yaml"])
def test_shipped_configs_merge_into_params(tmp_path, config):
    import shutil

    from support import REPO

    from core.params import load_params
    from pipelines.configure import merge_config

    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    changes = merge_config(params_file, REPO / "configs" / config)
    merged = load_params(params_file)
    if config == "paper-emotic.yaml":
        assert merged.model.backbone.name == "resnet50" and merged.objects.top_n == 50
        assert merged.train.batch_size == 200 and changes["train.batch_size"] == (32, 200)
    else:
        assert merged.data.kind == "caers"
    assert (tmp_path / "params.yaml.bak").is_file()


def test_config_with_a_typo_is_rejected_and_params_untouched(tmp_path):
    import shutil

    from support import REPO

    from pipelines.configure import merge_config

    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {boa: {headz: 4}}\n")
    with pytest.raises(ConfigError, match="headz"):
        merge_config(params_file, bad)
    assert params_file.read_text() == (REPO / "params.yaml").read_text()


# --------------------------------------------------------------------------- one source of defaults


def _leaf_paths(tree, prefix=""):
    """Every key of params.yaml as a dotted path; `tune.space` entries are data, not keys."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, dict) and path != "tune.space":
            yield from _leaf_paths(value, path)


def _without(tree, dotted):
    import copy

    out = copy.deepcopy(tree)
    node = out
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    del node[last]
    return out


def test_the_typed_configs_have_no_defaults_of_their_own():
    import dataclasses

    from core.params import Params

    def fields_with_defaults(cls, prefix=""):
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                yield path
            if isinstance(f.type, str) and f.type.endswith("Config"):
                import typing

                sub = typing.get_type_hints(cls)[f.name]
                yield from fields_with_defaults(sub, path + ".")

    assert list(fields_with_defaults(Params)) == []


def test_removing_any_key_from_params_is_an_error_naming_it(repo_params_dict):
    paths = list(_leaf_paths(repo_params_dict))
    assert len(paths) > 80 and "model.boa.heads" in paths and "train.lr" in paths
    for dotted in paths:
        with pytest.raises(ConfigError, match=rf"missing key\(s\) \['{dotted}'\]"):
            params_from_dict(_without(repo_params_dict, dotted))


@pytest.mark.parametrize("stage", ["ingest", "embeddings", "detect", "objects", "train", "evaluate"])
def test_a_stage_run_without_a_params_key_stops_naming_it(tmp_path, repo_params_dict, stage):
    import subprocess
    import sys

    import yaml
    from support import REPO

    # every stage reads the whole file: a key that is not even its own stops it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_without(repo_params_dict, "model.eld.t")))
    args = [] if stage in ("train", "evaluate") else ["--params", str(tmp_path / "params.yaml")]
    done = subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "missing key(s) ['model.eld.t']" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
