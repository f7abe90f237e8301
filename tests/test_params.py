"""params.yaml is the one home of every setting: it must parse strictly and round-trip."""
import pytest
from support import repo_params

from core.params import apply_overrides, params_from_dict, params_to_dict
from models.config import (
    CAERNetConfig,
    ConfigError,
    KostiConfig,
    RRLAConfig,
    from_dict,
    replace_path,
    to_dict,
)

FAMILIES = ("rrla", "kosti", "caernet")


def test_repo_params_parse_into_typed_configs(repo_params_dict):
    params = params_from_dict(repo_params_dict)
    model = repo_params_dict["model"]
    assert params.model.name == model["name"] and params.model.config is params.model.family(model["name"])
    assert params.model.rrla.boa.heads == model["rrla"]["boa"]["heads"]
    assert params.model.rrla.views["body"].size == model["rrla"]["views"]["body"]["size"]
    assert params.model.rrla.views["body"].norm == model["rrla"]["views"]["body"]["norm"]
    assert params.model.kosti.views["image"].size == model["kosti"]["views"]["image"]["size"]
    assert params.model.kosti.fusion_dim == model["kosti"]["fusion_dim"]
    assert params.model.caernet.channels == tuple(model["caernet"]["channels"])
    assert params.model.caernet.views["face"].size == model["caernet"]["views"]["face"]["size"]
    assert list(params.compare.models) == repo_params_dict["compare"]["models"]
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
    repo_params_dict["model"]["rrla"]["boa"]["headz"] = 4
    with pytest.raises(ConfigError, match=r"model\.rrla\.boa: unknown key\(s\) \['headz'\]"):
        params_from_dict(repo_params_dict)


@pytest.mark.parametrize("dotted", ["model.kosti.loss.cc", "model.caernet.widths", "model.rrla.views.body.sise",
                                    "model.kosti.body_backbone.input_size", "compare.model"])
def test_unknown_key_in_any_model_section_is_an_error_naming_its_path(repo_params_dict, dotted):
    *parents, last = dotted.split(".")
    node = repo_params_dict
    for key in parents:
        node = node[key]
    node[last] = 1
    where = ".".join(parents).replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"{where}: unknown key\(s\) \['{last}'\]"):
        params_from_dict(repo_params_dict)


def test_model_config_round_trips_through_a_dict():
    cfg = replace_path(repo_params().model.rrla, "boa.heads", 4)
    again = from_dict(RRLAConfig, to_dict(cfg))
    assert again == cfg and again.boa.heads == 4 and again.eld == repo_params().model.rrla.eld
    assert again.views == repo_params().model.rrla.views


@pytest.mark.parametrize("name, cls", [("rrla", RRLAConfig), ("kosti", KostiConfig), ("caernet", CAERNetConfig)])
def test_every_model_family_config_round_trips_through_a_dict(name, cls):
    cfg = repo_params().model.family(name)
    assert isinstance(cfg, cls)
    assert from_dict(cls, to_dict(cfg), f"model.{name}") == cfg


def test_for_model_applies_the_family_train_overrides():
    params = repo_params()
    kosti = params.for_model("kosti")
    assert kosti.train.batch_size == params.model.kosti.train["batch_size"]
    assert kosti.model.name == "kosti" and kosti.model.config is params.model.kosti
    for key, value in params.model.kosti.train.items():
        assert getattr(kosti.train, key) == value
    caernet = params.for_model("caernet")
    for key, value in params.model.caernet.train.items():
        assert getattr(caernet.train, key) == value
    # the train section itself and the chosen model stay as they were
    assert params.model.name == "rrla" and params.train.batch_size != params.model.kosti.train["batch_size"]
    assert params.for_model() == params.for_model(params.model.name)
    assert params.for_model("rrla").train == params.train, "rrla's train section has no overrides"


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_key_in_a_family_train_overrides_is_an_error_naming_it(repo_params_dict, name):
    repo_params_dict["model"][name]["train"]["batchsize"] = 8
    params_dict = dict(repo_params_dict, model=dict(repo_params_dict["model"], name="rrla"))
    if name == "rrla":
        with pytest.raises(ConfigError, match=r"model\.rrla\.train: unknown key\(s\) \['batchsize'\]"):
            params_from_dict(params_dict)
        return
    # loads while another model is chosen and the family is not compared ...
    params = params_from_dict(dict(params_dict, compare={"models": ["rrla"]}))
    # ... and stops as soon as the family is trained
    with pytest.raises(ConfigError, match=rf"model\.{name}\.train: unknown key\(s\) \['batchsize'\]"):
        params.for_model(name)
    chosen = dict(repo_params_dict, model=dict(repo_params_dict["model"], name=name))
    with pytest.raises(ConfigError, match=rf"model\.{name}\.train: unknown key\(s\) \['batchsize'\]"):
        params_from_dict(chosen)


@pytest.mark.parametrize("name", ["kosti", "caernet"])
def test_unknown_key_in_a_compared_family_train_overrides_stops_loading(repo_params_dict, name):
    # compare.models trains this family too: a typo in its train overrides must stop the params
    # from loading (before any work), as one in model.name's section does
    assert name in repo_params_dict["compare"]["models"]
    repo_params_dict["model"][name]["train"]["batchsize"] = 8
    with pytest.raises(ConfigError, match=rf"model\.{name}\.train: unknown key\(s\) \['batchsize'\]"):
        params_from_dict(repo_params_dict)


def test_unknown_model_name_is_an_error_naming_it(repo_params_dict):
    repo_params_dict["model"]["name"] = "resnet_only"
    with pytest.raises(ConfigError, match=r"unknown model 'resnet_only'"):
        params_from_dict(repo_params_dict)


def test_unknown_compare_model_is_an_error_naming_it(repo_params_dict):
    repo_params_dict["compare"]["models"] = ["rrla", "kosti", "emonet"]
    with pytest.raises(ConfigError, match=r"unknown model 'emonet'"):
        params_from_dict(repo_params_dict)


def test_family_lookup_rejects_unknown_names():
    with pytest.raises(ConfigError, match=r"unknown model 'nope'"):
        repo_params().model.family("nope")
    with pytest.raises(ConfigError, match=r"unknown model 'name'"):
        repo_params().model.family("name")
    with pytest.raises(ConfigError, match=r"unknown model 'nope'"):
        repo_params().for_model("nope")


def test_registry_names_one_registered_model_per_family():
    registry = repo_params().registry
    assert registry.name_for("kosti") == "ctxemo-kosti"
    assert registry.name_for("rrla") == "ctxemo-rrla"
    assert registry.name_for("caernet") == "ctxemo-caernet"


def test_overrides_apply_dotted_paths_and_reject_typos(repo_params_dict):
    changed = apply_overrides(repo_params_dict, {"model.rrla.eld.p": 0.7, "train.lr": 0.05})
    assert changed["model"]["rrla"]["eld"]["p"] == 0.7 and changed["train"]["lr"] == 0.05
    assert repo_params_dict["model"]["rrla"]["eld"]["p"] == 0.2, "the input dict must stay untouched"
    with pytest.raises(ConfigError, match="model.rrla.eld.q"):
        apply_overrides(repo_params_dict, {"model.rrla.eld.q": 1})
    with pytest.raises(ConfigError, match="model.eld.p"):
        apply_overrides(repo_params_dict, {"model.eld.p": 0.7})  # the old, pre-family path


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
        assert merged.model.rrla.backbone.name == "resnet50" and merged.objects.top_n == 50
        assert merged.model.rrla.views["body"].size == 224 and merged.model.kosti.views["image"].size == 224
        assert merged.model.caernet.views["face"].size == 224
        assert merged.train.batch_size == 200 and changes["train.batch_size"] == (32, 200)
    else:
        assert merged.data.kind == "caers"
    assert (tmp_path / "params.yaml.bak").is_file()


PAPER_TRAIN_KEYS = ("optimizer", "lr", "momentum", "batch_size", "backbone_lr", "lr_steps", "weight_decay",
                    "grad_clip_norm", "loss", "epochs", "frozen_backbone", "precise_bn", "precision")


def test_the_paper_config_sets_every_flagship_and_training_key_it_depends_on(repo_params_dict):
    # nothing the paper lacks may be inherited from params.yaml's CPU-demo settings
    from support import REPO

    from core.params import read_yaml
    from core.tracking import flatten

    paper = dict(flatten(read_yaml(REPO / "configs/paper-emotic.yaml")))
    flagship = [k for k, _ in flatten({"model": {"rrla": repo_params_dict["model"]["rrla"]}})
                if not k.startswith("model.rrla.train")]
    # the one key the paper leaves unsaid, left to params.yaml with the reason in the config's comment
    assert [k for k in flagship if k not in paper] == ["model.rrla.boa.geometry_dim"]
    assert [k for k in PAPER_TRAIN_KEYS if f"train.{k}" not in paper] == []
    literal = {"model.rrla.bpa.hidden": 32, "model.rrla.eld.scaled": False, "model.rrla.eld.activation": "every_layer",
               "model.rrla.standardise_objects": False, "train.weight_decay": 0.0, "train.grad_clip_norm": None,
               "train.lr": 0.01, "train.momentum": 0.9, "train.batch_size": 200, "objects.top_n": 50}
    assert {k: paper[k] for k in literal} == literal


def test_config_with_a_typo_is_rejected_and_params_untouched(tmp_path):
    import shutil

    from support import REPO

    from pipelines.configure import merge_config

    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {rrla: {boa: {headz: 4}}}\n")
    with pytest.raises(ConfigError, match="headz"):
        merge_config(params_file, bad)
    assert params_file.read_text() == (REPO / "params.yaml").read_text()


# --------------------------------------------------------------------------- one source of defaults


def _is_data(path):
    """Mappings whose entries are data, not keys: `tune.space` and each model's `train` overrides
    (optional by design: the train section holds every value) and `views` (their entries are
    covered by test_removing_a_view_of_any_model_is_an_error_naming_it)."""
    parts = path.split(".")
    return path == "tune.space" or (len(parts) == 3 and parts[0] == "model" and parts[2] in ("train", "views"))


def _leaf_paths(tree, prefix=""):
    """Every key of params.yaml as a dotted path (the entries of `_is_data` mappings excepted,
    but their own keys, e.g. model.rrla.views.body.size, included)."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, dict) and path != "tune.space":
            if _is_data(path):
                for entry, sub in value.items():  # e.g. views.body: its size and norm are keys
                    if isinstance(sub, dict):
                        yield from _leaf_paths(sub, f"{path}.{entry}")
            else:
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
    import typing

    from core.params import Params
    from models.config import BackboneConfig, ViewConfig

    def nested_dataclass(tp):
        """The config dataclass a field holds (directly, optionally or as a dict's values)."""
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is dict:
            tp = args[1]
        elif args and len(args) == 1:
            tp = args[0]
        return tp if dataclasses.is_dataclass(tp) else None

    seen = set()

    def fields_with_defaults(cls, prefix=""):
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                yield path
            sub = nested_dataclass(hints[f.name])
            if sub is not None:
                yield from fields_with_defaults(sub, path + ".")

    assert list(fields_with_defaults(Params)) == []
    # the walk reached every model family's config and the parts they share
    assert {RRLAConfig, KostiConfig, CAERNetConfig, ViewConfig, BackboneConfig} <= seen


def test_removing_any_key_from_params_is_an_error_naming_it(repo_params_dict):
    paths = list(_leaf_paths(repo_params_dict))
    assert len(paths) > 80 and "model.rrla.boa.heads" in paths and "train.lr" in paths
    # every model family's section, the views' settings and the compare section are covered
    for dotted in ("model.name", "model.rrla", "model.rrla.person_view", "model.rrla.views", "model.rrla.train",
                   "model.rrla.views.body.size", "model.rrla.views.face.norm", "model.rrla.eld.t",
                   "model.kosti", "model.kosti.views.image.size", "model.kosti.loss.margin",
                   "model.kosti.context_backbone.weights", "model.kosti.train", "model.caernet",
                   "model.caernet.channels", "model.caernet.views.image_face_masked.norm", "model.caernet.train",
                   "compare", "compare.models", "registry.model_name"):
        assert dotted in paths, dotted
    for dotted in paths:
        with pytest.raises(ConfigError, match=rf"missing key\(s\) \['{dotted}'\]"):
            params_from_dict(_without(repo_params_dict, dotted))


def _view_entries(params_dict):
    return [(name, view) for name in FAMILIES for view in params_dict["model"][name]["views"]]


def test_removing_a_view_of_any_model_is_an_error_naming_it(repo_params_dict):
    # a model's views are a mapping (view name -> size, norm), so removing one is not a missing
    # dataclass field; it must still stop the params from loading, naming the view
    entries = _view_entries(repo_params_dict)
    assert ("rrla", "body") in entries and ("kosti", "image") in entries and ("caernet", "face") in entries
    loaded = []
    for name, view in entries:
        try:
            params_from_dict(_without(repo_params_dict, f"model.{name}.views.{view}"))
        except ConfigError as exc:
            assert f"model.{name}.views" in str(exc) and repr(view) in str(exc), str(exc)
        else:
            loaded.append(f"model.{name}.views.{view}")
    assert loaded == [], f"params without these views loaded without an error: {loaded}"


def test_removing_a_train_override_keeps_the_train_section_value(repo_params_dict):
    # a family's train entries are optional overrides: without one, the train section's value is used
    params = params_from_dict(_without(repo_params_dict, "model.kosti.train.batch_size"))
    assert params.for_model("kosti").train.batch_size == repo_params_dict["train"]["batch_size"]


# the stages reading ./params.yaml (no --params option), with their arguments
CWD_STAGES = {"train": [], "evaluate": [], "compare": ["kosti"], "compare_report": []}


@pytest.mark.parametrize("key", ["model.rrla.eld.t", "model.kosti.loss.c", "compare.models"])
@pytest.mark.parametrize("stage", ["ingest", "embeddings", "detect", "objects", "train", "evaluate", "compare",
                                   "compare_report"])
def test_a_stage_run_without_a_params_key_stops_naming_it(tmp_path, repo_params_dict, stage, key):
    import subprocess
    import sys

    import yaml
    from support import REPO

    # every stage reads the whole file: a key that is not even its own stops it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_without(repo_params_dict, key)))
    args = CWD_STAGES[stage] if stage in CWD_STAGES else ["--params", str(tmp_path / "params.yaml")]
    done = subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"missing key(s) ['{key}']" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
