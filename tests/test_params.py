"""params.yaml is the one home of every setting: it must parse strictly and round-trip."""
import pytest

from models.config import ConfigError, ModelConfig, from_dict, replace_path, to_dict
from stages.params import apply_overrides, params_from_dict, params_to_dict


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
    cfg = replace_path(ModelConfig(), "boa.heads", 4)
    again = from_dict(ModelConfig, to_dict(cfg))
    assert again == cfg and again.boa.heads == 4 and again.eld == ModelConfig().eld


def test_overrides_apply_dotted_paths_and_reject_typos(repo_params_dict):
    changed = apply_overrides(repo_params_dict, {"model.eld.p": 0.7, "train.lr": 0.05})
    assert changed["model"]["eld"]["p"] == 0.7 and changed["train"]["lr"] == 0.05
    assert repo_params_dict["model"]["eld"]["p"] == 0.2, "the input dict must stay untouched"
    with pytest.raises(ConfigError, match="model.eld.q"):
        apply_overrides(repo_params_dict, {"model.eld.q": 1})


@pytest.mark.parametrize("config", ["paper-emotic.yaml", "caers.yaml"])
def test_shipped_configs_merge_into_params(tmp_path, config):
    import shutil

    from pipelines.configure import merge_config
    from stages.params import load_params
    from tests_paths import REPO

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

    from pipelines.configure import merge_config
    from tests_paths import REPO

    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {boa: {headz: 4}}\n")
    with pytest.raises(ConfigError, match="headz"):
        merge_config(params_file, bad)
    assert params_file.read_text() == (REPO / "params.yaml").read_text()
