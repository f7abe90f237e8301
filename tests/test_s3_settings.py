"""core/storage.py and `ctxemo storage`: every S3 location and endpoint comes from the environment, checked, never a secret."""
from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO  # noqa: E402

from core.errors import UserError
from core.storage import StorageSettings, split_s3_uri


def test_no_bucket_means_everything_stays_local(tmp_path):
    settings = StorageSettings.from_env({})
    assert not settings.enabled and settings.endpoint_url is None
    assert settings.mlflow_artifact_root() is None
    storage = settings.ray_run_storage(tmp_path / "results")
    assert storage == {"storage_path": str((tmp_path / "results").resolve()), "storage_filesystem": None}
    with pytest.raises(UserError, match="CTXEMO_S3_BUCKET"):
        settings.dvc_remote_url()


def test_locations_share_one_prefix_under_the_bucket():
    settings = StorageSettings.from_env({"CTXEMO_S3_BUCKET": "team-ml", "CTXEMO_S3_PREFIX": "/proj/ctxemo/"})
    assert settings.prefix == "proj/ctxemo"
    assert settings.dvc_remote_url() == "s3://team-ml/proj/ctxemo/dvc"
    assert settings.mlflow_artifact_root() == "s3://team-ml/proj/ctxemo/mlflow"
    assert settings.ray_storage_path("ignored") == "s3://team-ml/proj/ctxemo/ray"
    assert settings.batch_input_uri() == "s3://team-ml/proj/ctxemo/inference/input"
    assert settings.batch_output_uri() == "s3://team-ml/proj/ctxemo/inference/output"
    assert StorageSettings.from_env({"CTXEMO_S3_BUCKET": "team-ml"}).dvc_remote_url() == "s3://team-ml/ctxemo/dvc"


def test_on_aws_ray_resolves_the_uri_itself_and_no_filesystem_is_built():
    settings = StorageSettings.from_env({"CTXEMO_S3_BUCKET": "team-ml", "AWS_REGION": "eu-west-1"})
    assert settings.ray_run_storage(".") == {"storage_path": "s3://team-ml/ctxemo/ray", "storage_filesystem": None}
    assert settings.filesystem_and_path("/data/local") == (None, "/data/local")


def test_a_custom_endpoint_gives_ray_a_filesystem_and_a_scheme_less_path():
    env = {"CTXEMO_S3_BUCKET": "team-ml", "AWS_ENDPOINT_URL": "http://minio.internal:9000",
           "AWS_ENDPOINT_URL_S3": "https://s3.internal:8443/"}
    settings = StorageSettings.from_env(env)
    # The S3-specific variable wins over the generic one, as in botocore.
    assert settings.endpoint_url == "https://s3.internal:8443"
    assert settings.mlflow_endpoint_url == "https://s3.internal:8443"
    storage = settings.ray_run_storage(".")
    assert storage["storage_path"] == "team-ml/ctxemo/ray"
    filesystem = storage["storage_filesystem"]
    assert type(filesystem).__name__ == "S3FileSystem"
    assert filesystem.region == "us-east-1"
    fs, path = settings.filesystem_and_path("s3://other-bucket/batch/in/")
    assert type(fs).__name__ == "S3FileSystem" and path == "other-bucket/batch/in"


def test_filesystem_survives_pickling_without_credentials_inside(monkeypatch):
    """Ray ships the filesystem to every worker: it carries the endpoint, each node finds its own keys."""
    import pickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KEYID-MUST-NOT-TRAVEL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET-MUST-NOT-TRAVEL")
    env = {"CTXEMO_S3_BUCKET": "team-ml", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"}
    filesystem = StorageSettings.from_env(env).ray_storage_filesystem()
    payload = pickle.dumps(filesystem)
    assert b"127.0.0.1:9000" in payload
    assert b"MUST-NOT-TRAVEL" not in payload
    assert pickle.loads(payload).equals(filesystem)


def test_mlflow_endpoint_can_differ_from_the_data_endpoint():
    settings = StorageSettings.from_env({"CTXEMO_S3_BUCKET": "b-1x", "AWS_ENDPOINT_URL_S3": "http://a.internal:1",
                                         "MLFLOW_S3_ENDPOINT_URL": "http://b.internal:2"})
    assert (settings.endpoint_url, settings.mlflow_endpoint_url) == ("http://a.internal:1", "http://b.internal:2")
    assert settings.child_env() == {"CTXEMO_S3_PREFIX": "ctxemo", "CTXEMO_S3_BUCKET": "b-1x",
                                    "AWS_ENDPOINT_URL_S3": "http://a.internal:1",
                                    "MLFLOW_S3_ENDPOINT_URL": "http://b.internal:2"}


def test_batch_locations_can_be_overridden_and_are_checked():
    settings = StorageSettings.from_env({"CTXEMO_BATCH_INPUT_URI": "s3://in-bucket/requests",
                                         "CTXEMO_BATCH_OUTPUT_URI": "/mnt/predictions"})
    assert settings.batch_input_uri() == "s3://in-bucket/requests"
    assert settings.batch_output_uri() == "/mnt/predictions"
    with pytest.raises(UserError, match="not an s3://bucket/key URI"):
        StorageSettings.from_env({"CTXEMO_BATCH_INPUT_URI": "s3:///no-bucket"})


@pytest.mark.parametrize("env, message", [
    ({"CTXEMO_S3_BUCKET": "s3://team-ml/data"}, "not a URI"),
    ({"CTXEMO_S3_BUCKET": "Team_ML"}, "not a valid bucket name"),
    ({"CTXEMO_S3_BUCKET": "ok-bucket", "CTXEMO_S3_PREFIX": "a//b"}, "CTXEMO_S3_PREFIX"),
    ({"CTXEMO_S3_BUCKET": "ok-bucket", "CTXEMO_S3_PREFIX": "a/../b"}, "CTXEMO_S3_PREFIX"),
    ({"AWS_ENDPOINT_URL_S3": "minio:9000"}, "AWS_ENDPOINT_URL_S3"),
    ({"AWS_ENDPOINT_URL": "http://user:pw@minio:9000"}, "must not carry credentials"),
    ({"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000/bucket"}, "without a path"),
])
def test_bad_settings_are_one_line_user_errors_naming_the_variable(env, message):
    with pytest.raises(UserError, match=message):
        StorageSettings.from_env(env)


def test_dvc_remote_url_is_committed_but_endpoint_and_region_stay_local():
    settings = StorageSettings.from_env({"CTXEMO_S3_BUCKET": "team-ml", "AWS_ENDPOINT_URL_S3": "http://s3.lan:9000",
                                         "AWS_DEFAULT_REGION": "eu-central-1"})
    assert settings.dvc_remote_commands("storage") == [
        ["remote", "add", "--force", "--default", "storage", "s3://team-ml/ctxemo/dvc"],
        ["remote", "modify", "--local", "storage", "endpointurl", "http://s3.lan:9000"],
        ["remote", "modify", "--local", "storage", "region", "eu-central-1"],
    ]
    assert StorageSettings.from_env({"CTXEMO_S3_BUCKET": "team-ml"}).dvc_remote_commands("r") == [
        ["remote", "add", "--force", "--default", "r", "s3://team-ml/ctxemo/dvc"]]


def test_split_s3_uri():
    assert split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(UserError):
        split_s3_uri("/local/path")


def test_command_line_prints_locations_and_never_the_secret(tmp_path):
    secret = "do-not-print-this-secret-value"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CTXEMO_S3_BUCKET": "team-ml",
           "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "TESTKEYID",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "storage"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"dvc_remote": "s3://team-ml/ctxemo/dvc"' in done.stdout
    assert '"credentials": "found (env)"' in done.stdout
    assert secret not in done.stdout + done.stderr and "TESTKEYID" not in done.stdout + done.stderr

    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "storage"], cwd=REPO, timeout=60, capture_output=True,
                         text=True, env={**env, "CTXEMO_S3_BUCKET": "s3://x"})
    assert bad.returncode == 2 and "error: CTXEMO_S3_BUCKET" in bad.stderr and "Traceback" not in bad.stderr
