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
