"""DVC, MLflow, Ray Train and batch-inference storage against a real S3 server on 127.0.0.1.

The server (SeaweedFS, tests/s3_fixture.py) demands signed requests with throwaway keys made
by the fixture; everything below reaches it only through `core.storage` and the variables
a user would export (CTXEMO_S3_BUCKET, CTXEMO_S3_PREFIX, AWS_ENDPOINT_URL_S3, the AWS keys).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from s3_fixture import list_keys

DVC_TIMEOUT_S = 120


def test_server_refuses_requests_signed_with_a_wrong_secret(s3_server, s3_settings):
    import boto3
    import botocore.exceptions

    good = s3_settings.boto3_client()
    good.put_object(Bucket=s3_settings.bucket, Key=f"{s3_settings.prefix}/probe.txt", Body=b"ok")
    forged = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=s3_server.access_key, aws_secret_access_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        forged.get_object(Bucket=s3_settings.bucket, Key=f"{s3_settings.prefix}/probe.txt")
    assert refused.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}
    assert good.get_object(Bucket=s3_settings.bucket, Key=f"{s3_settings.prefix}/probe.txt")["Body"].read() == b"ok"


# --------------------------------------------------------------------------- DVC


def _dvc(repo: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=DVC_TIMEOUT_S)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_dvc_push_and_pull_pipeline_outputs_through_the_bucket(s3_settings, tmp_path, monkeypatch):
    for key, sub in (("DVC_SITE_CACHE_DIR", "site"), ("DVC_GLOBAL_CONFIG_DIR", "global"),
                     ("DVC_SYSTEM_CONFIG_DIR", "system")):
        monkeypatch.setenv(key, str(tmp_path / "dvc-config" / sub))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    (repo / "make_outputs.py").write_text(
        "from pathlib import Path\n"
        "out = Path('out'); out.mkdir()\n"
        "(out / 'table.csv').write_text('a,b\\n1,2\\n')\n"
        "(out / 'weights.bin').write_bytes(bytes(range(256)) * 64)\n"
    )
    _dvc(repo, "stage", "add", "-q", "-n", "make", "-d", "make_outputs.py", "-o", "out",
         f"{sys.executable} make_outputs.py")
    _dvc(repo, "repro", "-q")
    files = {name: (repo / "out" / name).read_bytes() for name in ("table.csv", "weights.bin")}

    s3_settings.configure_dvc_remote(repo)
    committed = (repo / ".dvc" / "config").read_text()
    local = (repo / ".dvc" / "config.local").read_text()
    assert s3_settings.dvc_remote_url() in committed and "remote = storage" in committed
    # The endpoint differs per machine, so it stays out of the committed config.
    assert s3_settings.endpoint_url not in committed and s3_settings.endpoint_url in local

    _dvc(repo, "push", "-q")
    keys = set(list_keys(s3_settings, "dvc"))
    remote_root = f"{s3_settings.prefix}/dvc/files/md5"
    for data in files.values():
        digest = _md5(data)
        assert f"{remote_root}/{digest[:2]}/{digest[2:]}" in keys
    dir_objects = [k for k in keys if k.endswith(".dir")]
    assert len(dir_objects) == 1 and len(keys) == 3

    # A fresh machine: no workspace copy, no cache; only the bucket has the data.
    shutil.rmtree(repo / "out")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull", "-q")
    assert {name: (repo / "out" / name).read_bytes() for name in files} == files
    assert "up to date" in _dvc(repo, "status").lower()


# --------------------------------------------------------------------------- MLflow


def test_mlflow_run_artifacts_and_model_land_in_the_bucket(s3_settings, tmp_path, monkeypatch):
    import mlflow
    import torch
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from core import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CTXEMO_MLFLOW_ARTIFACT_ROOT", s3_settings.mlflow_artifact_root())
    previous_uri = tracking_utils._tracking_uri
    try:
        experiment_id = tracking.setup(experiment="s3-artifacts")
        assert mlflow.get_experiment(experiment_id).artifact_location == f"{s3_settings.uri('mlflow')}"
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2).eval()
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_text("epoch,loss\n0,0.5\n", "reports/history.csv")
            info = mlflow.pytorch.log_model(model, name="model", input_example=np.zeros((2, 3), np.float32),
                                            pip_requirements=["torch"])
        run_id = run.info.run_id
        keys = list_keys(s3_settings, "mlflow")
        history_key = f"{s3_settings.prefix}/mlflow/{run_id}/artifacts/reports/history.csv"
        assert history_key in keys
        body = s3_settings.boto3_client().get_object(Bucket=s3_settings.bucket, Key=history_key)["Body"].read()
        assert body == b"epoch,loss\n0,0.5\n"
        assert info.artifact_path.startswith(s3_settings.uri("mlflow") + "/")
        model_prefix = split_key(info.artifact_path)
        assert f"{model_prefix}/MLmodel" in keys
        assert any(k.startswith(f"{model_prefix}/data/") for k in keys)

        loaded = mlflow.pytorch.load_model(info.model_uri)
        x = torch.randn(4, 3)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
    finally:
        tracking_utils._tracking_uri = previous_uri


def split_key(uri: str) -> str:
    from core.storage import split_s3_uri

    return split_s3_uri(uri)[1]


# --------------------------------------------------------------------------- Ray Train

EPOCHS = 4
CRASH_AFTER_EPOCH = 1
LEARNING_RATE = 0.1
WORKERS = 2  # DDP: both ranks must load the checkpoint from the bucket


def _toy_data():
    import torch

    x = torch.linspace(-1, 1, 32).reshape(8, 4)
    return x, x @ torch.tensor([[0.5], [-1.0], [2.0], [0.25]]) + 0.1


def _toy_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def toy_train_loop(config):
    """Full-batch SGD on fixed data, a checkpoint every epoch, resume from `get_checkpoint()`."""
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint, CheckpointConsistencyMode

    torch.set_num_threads(1)
    model = _toy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    start_epoch, resumed_from = 0, ""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        resumed_from = f"{type(checkpoint.filesystem).__name__}:{checkpoint.path}"
    model = ray.train.torch.prepare_model(model)
    x, y = _toy_data()
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start_epoch, config["epochs"]):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                           Path(folder) / "state.pt")
                saved = Checkpoint.from_directory(folder)
            ray.train.report({"epoch": epoch, "loss": float(loss), "start_epoch": start_epoch,
                              "resumed_from": resumed_from}, checkpoint=saved)
        if epoch == config.get("crash_after_epoch"):
            # Die like a lost node, but only once this epoch's checkpoint is committed to
            # storage; otherwise the test would race the controller's bookkeeping.
            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
            raise RuntimeError("simulated loss of the node running this worker")


def _fit(settings, run_name: str, local_dir: Path, **config):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        toy_train_loop,
        train_loop_config={"epochs": EPOCHS, **config},
        scaling_config=ScalingConfig(num_workers=WORKERS, use_gpu=False),
        run_config=RunConfig(name=run_name, failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             **settings.ray_run_storage(local_dir)),
    )
    return trainer.fit()


@contextlib.contextmanager
def _fresh_ray_cluster():
    """A new local Ray cluster with its own empty temp dir, removed afterwards.

    The temp dir sits directly in /tmp: Ray's socket paths under a pytest tmp_path would pass
    the 107-byte AF_UNIX limit.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rs3-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2,
             _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_train_checkpoints_to_s3_and_a_new_cluster_resumes_from_there(s3_settings, tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():  # this test starts its own clusters; an earlier test's session Ray must go
        ray.shutdown()
    import ray.cloudpickle

    # The controller notices finished and failed workers at this interval (default 2 s); the
    # toy run is all waiting otherwise. Set before ray.init so the controller inherits it.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Workers cannot import this test module by name; ship its functions by value.
    this_module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(this_module)
    try:
        _check_resume_from_s3(tmp_path)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this_module)


def _check_resume_from_s3(tmp_path: Path) -> None:
    import torch
    from ray.train import TrainingFailedError

    from core.storage import StorageSettings

    # Built from the environment, exactly as core/training/trainer.py's fit() does.
    settings = StorageSettings.from_env()
    storage = settings.ray_run_storage(tmp_path / "unused-local-results")
    assert storage["storage_path"] == f"{settings.bucket}/{settings.prefix}/ray"
    assert type(storage["storage_filesystem"]).__name__ == "S3FileSystem"
    run_name = "toy-resume"

    with _fresh_ray_cluster(), pytest.raises(TrainingFailedError):
        _fit(settings, run_name, tmp_path, crash_after_epoch=CRASH_AFTER_EPOCH)
    run_keys = list_keys(settings, f"ray/{run_name}")
    saved_epochs = sorted(_epochs_in_bucket(settings, run_keys))
    assert saved_epochs == [0, 1]

    # A brand-new Ray cluster with an empty temp dir: all it shares with the first is the bucket.
    with _fresh_ray_cluster():
        result = _fit(settings, run_name, tmp_path)
    assert result.metrics["start_epoch"] == CRASH_AFTER_EPOCH + 1
    assert result.metrics["epoch"] == EPOCHS - 1
    filesystem, path = result.metrics["resumed_from"].split(":", 1)
    assert filesystem == "S3FileSystem"
    assert path.startswith(f"{settings.bucket}/{settings.prefix}/ray/{run_name}/checkpoint_")
    assert result.checkpoint.path.startswith(f"{settings.bucket}/{settings.prefix}/ray/{run_name}/")

    # num_to_keep=2: the bucket now holds exactly the last two epochs.
    run_keys = list_keys(settings, f"ray/{run_name}")
    assert sorted(_epochs_in_bucket(settings, run_keys)) == [EPOCHS - 2, EPOCHS - 1]

    # Interrupted-and-resumed training equals an uninterrupted run of the same loop.
    reference = _toy_model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=LEARNING_RATE)
    x, y = _toy_data()
    for _ in range(EPOCHS):
        loss = torch.nn.functional.mse_loss(reference(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with result.checkpoint.as_directory() as folder:
        final = torch.load(Path(folder) / "state.pt", weights_only=True)["model"]
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(final[name], value, rtol=1e-6, atol=1e-7)


def _epochs_in_bucket(settings, keys: list[str]) -> list[int]:
    """The epoch stored in every checkpoint file in the bucket, read back with boto3."""
    import torch

    client = settings.boto3_client()
    epochs = []
    for key in keys:
        if key.endswith("/state.pt"):
            body = client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
            epochs.append(int(torch.load(io.BytesIO(body), weights_only=True)["epoch"]))
    return epochs


# --------------------------------------------------------------------------- batch inference


def test_batch_inference_prefixes_read_and_write_through_the_settings_filesystem(s3_settings):
    import pyarrow as pa
    import pyarrow.parquet as pq

    input_fs, input_path = s3_settings.filesystem_and_path(s3_settings.batch_input_uri())
    output_fs, output_path = s3_settings.filesystem_and_path(s3_settings.batch_output_uri())
    assert input_path == f"{s3_settings.bucket}/{s3_settings.prefix}/inference/input"
    requests = pa.table({"sample_id": ["a", "b", "c"], "image_path": ["x.jpg", "y.jpg", "z.jpg"]})
    pq.write_table(requests, f"{input_path}/part-0.parquet", filesystem=input_fs)

    read_back = pq.read_table(input_path, filesystem=input_fs)
    scores = np.arange(len(read_back) * 2, dtype=np.float32).reshape(-1, 2)
    predictions = read_back.append_column("scores", pa.array(list(scores), type=pa.list_(pa.float32())))
    pq.write_table(predictions, f"{output_path}/part-0.parquet", filesystem=output_fs)

    keys = list_keys(s3_settings, "inference")
    assert keys == [f"{s3_settings.prefix}/inference/input/part-0.parquet",
                    f"{s3_settings.prefix}/inference/output/part-0.parquet"]
    body = s3_settings.boto3_client().get_object(Bucket=s3_settings.bucket, Key=keys[1])["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.column("sample_id").to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(np.stack(table.column("scores").to_numpy(zero_copy_only=False)), scores)

