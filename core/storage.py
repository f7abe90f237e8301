"""Where data, runs and checkpoints live once ctxemo outgrows one machine: S3 settings from the environment.

    ctxemo storage                  # print the resolved settings (never a secret)
    ctxemo storage dvc-remote       # point DVC's default remote at s3://BUCKET/PREFIX/dvc

Nothing here is read from a file in the repository: the environment is the only source, so
the same code runs on a laptop (no variable set: everything stays local, the embedded
defaults) and on a cluster (variables set by the pod spec, the job or the shell).

| variable | meaning |
|---|---|
| `CTXEMO_S3_BUCKET` | bucket name; unset = no S3 at all |
| `CTXEMO_S3_PREFIX` | key prefix inside the bucket (default `ctxemo`) |
| `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` | an S3-compatible server (MinIO, SeaweedFS, Ceph); unset = AWS |
| `MLFLOW_S3_ENDPOINT_URL` | MLflow's own endpoint variable; defaults to the endpoint above |
| `AWS_REGION`, else `AWS_DEFAULT_REGION` | region; unset = left to the SDKs |
| `CTXEMO_BATCH_INPUT_URI`, `CTXEMO_BATCH_OUTPUT_URI` | batch-inference folders; default `.../inference/input` and `.../inference/output` |

Credentials are never read, stored or passed on here: boto3, s3fs (DVC) and pyarrow (Ray) each
find them through the standard AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
`AWS_SESSION_TOKEN`, `AWS_PROFILE` and ~/.aws, web identity / IRSA, instance roles), so every
node resolves its own and none travels inside a pickled filesystem.

Layout under `s3://BUCKET/PREFIX/`: `dvc/` (DVC remote), `mlflow/` (MLflow artifact root),
`ray/` (Ray Train / Tune storage_path: checkpoints every node can resume from),
`inference/input/` and `inference/output/`.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from core.env import storage_environment
from core.errors import UserError

DEFAULT_PREFIX = "ctxemo"
DEFAULT_DVC_REMOTE = "storage"
# AWS's rule for new buckets; S3-compatible servers accept the same names.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _first(environ: Mapping[str, str], *names: str) -> tuple[str | None, str | None]:
    """The first non-empty variable among `names`: (name, value)."""
    for name in names:
        value = (environ.get(name) or "").strip()
        if value:
            return name, value
    return None, None


def _check_endpoint(variable: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{variable}={url!r} is not an endpoint URL: expected http(s)://host[:port]")
    if parts.username or parts.password:
        raise UserError(f"{variable} must not carry credentials; use AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY or a profile instead")
    if parts.path not in ("", "/") or parts.query:
        raise UserError(f"{variable}={url!r} must be only scheme://host[:port], without a path")
    return f"{parts.scheme}://{parts.netloc}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/...` -> (bucket, key); an error for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise UserError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


@dataclass(frozen=True)
class StorageSettings:
    """S3 locations and endpoint for DVC, MLflow, Ray and batch inference; built by `from_env()`."""

    bucket: str | None = None
    prefix: str = DEFAULT_PREFIX
    endpoint_url: str | None = None
    mlflow_endpoint_url: str | None = None
    region: str | None = None
    batch_input: str | None = None
    batch_output: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StorageSettings":
        env = storage_environment() if environ is None else environ
        _, bucket = _first(env, "CTXEMO_S3_BUCKET")
        if bucket is not None and not _BUCKET_NAME.match(bucket):
            hint = (" (a bucket name, not a URI: put the key path in CTXEMO_S3_PREFIX)"
                    if "/" in bucket or ":" in bucket else "")
            raise UserError(f"CTXEMO_S3_BUCKET={bucket!r} is not a valid bucket name{hint}")
        prefix_var, prefix = _first(env, "CTXEMO_S3_PREFIX")
        prefix = (prefix if prefix is not None else DEFAULT_PREFIX).strip("/")
        if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
            raise UserError(f"{prefix_var}={prefix!r} has an empty, '.' or '..' path segment")
        endpoint_var, endpoint = _first(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        if endpoint is not None:
            endpoint = _check_endpoint(endpoint_var, endpoint)
        mlflow_var, mlflow_endpoint = _first(env, "MLFLOW_S3_ENDPOINT_URL")
        if mlflow_endpoint is not None:
            mlflow_endpoint = _check_endpoint(mlflow_var, mlflow_endpoint)
        _, region = _first(env, "AWS_REGION", "AWS_DEFAULT_REGION")
        batch = {}
        for field, variable in (("batch_input", "CTXEMO_BATCH_INPUT_URI"),
                                ("batch_output", "CTXEMO_BATCH_OUTPUT_URI")):
            _, value = _first(env, variable)
            if value is not None and value.startswith("s3://"):
                split_s3_uri(value)
            batch[field] = value
        return cls(bucket=bucket, prefix=prefix, endpoint_url=endpoint,
                   mlflow_endpoint_url=mlflow_endpoint or endpoint, region=region, **batch)

    # ------------------------------------------------------------------ locations

    @property
    def enabled(self) -> bool:
        """True when a bucket is configured; False means the embedded, local defaults."""
        return self.bucket is not None

    def uri(self, *parts: str) -> str:
        """`s3://bucket/prefix/part/...`; an error when no bucket is configured."""
        if not self.enabled:
            raise UserError("no S3 bucket configured: set CTXEMO_S3_BUCKET (and CTXEMO_S3_PREFIX)")
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def dvc_remote_url(self) -> str:
        return self.uri("dvc")

    def mlflow_artifact_root(self) -> str | None:
        """Artifact location for new MLflow experiments; None = the tracking store's default."""
        return self.uri("mlflow") if self.enabled else None

    def batch_input_uri(self) -> str:
        return self.batch_input or self.uri("inference", "input")

    def batch_output_uri(self) -> str:
        return self.batch_output or self.uri("inference", "output")

    # ------------------------------------------------------------------ Ray

    def ray_storage_path(self, default_local: str | os.PathLike[str]) -> str:
        """Ray Train / Tune storage as a URI: `s3://bucket/prefix/ray`, else the local folder (absolute)."""
        if self.enabled:
            return self.uri("ray")
        return str(Path(default_local).resolve())

    def ray_storage_filesystem(self):
        """A pyarrow S3FileSystem for a custom endpoint; None where Ray can resolve the URI itself."""
        if not (self.enabled and self.endpoint_url):
            return None
        return self.pyarrow_filesystem()

    def ray_run_storage(self, default_local: str | os.PathLike[str]) -> dict[str, Any]:
        """`storage_path` / `storage_filesystem` keyword arguments for ray.train / ray.tune RunConfig.

        With a custom filesystem Ray wants the path without its scheme (`bucket/prefix/ray`).
        """
        path = self.ray_storage_path(default_local)
        filesystem = self.ray_storage_filesystem()
        if filesystem is not None:
            bucket, key = split_s3_uri(path)
            path = f"{bucket}/{key}"
        return {"storage_path": path, "storage_filesystem": filesystem}

    def pyarrow_filesystem(self):
        """pyarrow S3FileSystem for this endpoint and region; credentials from the AWS chain on each node."""
        from pyarrow import fs

        kwargs: dict[str, Any] = {}
        # S3-compatible servers ignore the region, but without one the AWS SDK probes the
        # instance metadata service first, which stalls off EC2.
        region = self.region or ("us-east-1" if self.endpoint_url else None)
        if region:
            kwargs["region"] = region
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
        return fs.S3FileSystem(**kwargs)

    def filesystem_and_path(self, uri: str) -> tuple[Any, str]:
        """What Ray Data / pyarrow readers and writers take: (filesystem or None, path).

        `s3://` URIs get this endpoint's filesystem and a scheme-less path; anything else
        (a local path, gs://, ...) is passed through for the library to resolve.
        """
        if not uri.startswith("s3://"):
            return None, uri
        bucket, key = split_s3_uri(uri)
        return self.pyarrow_filesystem(), f"{bucket}/{key}".rstrip("/")

    # ------------------------------------------------------------------ clients

    def boto3_client(self, service: str = "s3"):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region)

    def child_env(self) -> dict[str, str]:
        """Non-secret variables a child process (or a Ray runtime_env) needs to reach the same storage."""
        env = {"CTXEMO_S3_PREFIX": self.prefix}
        for key, value in (("CTXEMO_S3_BUCKET", self.bucket), ("AWS_ENDPOINT_URL_S3", self.endpoint_url),
                           ("MLFLOW_S3_ENDPOINT_URL", self.mlflow_endpoint_url), ("AWS_REGION", self.region),
                           ("CTXEMO_BATCH_INPUT_URI", self.batch_input),
                           ("CTXEMO_BATCH_OUTPUT_URI", self.batch_output)):
            if value:
                env[key] = value
        return env

    def dvc_remote_commands(self, name: str = DEFAULT_DVC_REMOTE) -> list[list[str]]:
        """`dvc` argument lists that make `name` the default remote at `dvc_remote_url()`.

        The URL goes into .dvc/config (committed: a bucket name is not a secret); the endpoint
        and region into .dvc/config.local, because they differ between machines.
        """
        commands = [["remote", "add", "--force", "--default", name, self.dvc_remote_url()]]
        if self.endpoint_url:
            commands.append(["remote", "modify", "--local", name, "endpointurl", self.endpoint_url])
        if self.region:
            commands.append(["remote", "modify", "--local", name, "region", self.region])
        return commands

    def configure_dvc_remote(self, repo: str | os.PathLike[str] = ".", name: str = DEFAULT_DVC_REMOTE) -> None:
        """Run `dvc_remote_commands` in `repo` with this interpreter's DVC."""
        for args in self.dvc_remote_commands(name):
            done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
            if done.returncode != 0:
                raise UserError(f"`dvc {' '.join(args)}` failed in {repo}: {done.stderr.strip() or done.stdout.strip()}")

    def describe(self) -> dict[str, Any]:
        """Everything resolved, for humans: locations and where credentials come from, never their values."""
        if not self.enabled:
            return {"s3": "off (CTXEMO_S3_BUCKET unset): DVC, MLflow and Ray stay local"}
        return {
            "dvc_remote": self.dvc_remote_url(), "mlflow_artifact_root": self.mlflow_artifact_root(),
            "ray_storage": self.ray_storage_path("."), "batch_input": self.batch_input_uri(),
            "batch_output": self.batch_output_uri(), "endpoint_url": self.endpoint_url or "AWS default",
            "mlflow_s3_endpoint_url": self.mlflow_endpoint_url or "AWS default",
            "region": self.region or "SDK default", "credentials": credential_source(),
        }


def credential_source() -> str:
    """How boto3's chain found credentials (e.g. 'env', 'shared-credentials-file', 'iam-role')."""
    import boto3

    credentials = boto3.Session().get_credentials()
    return "none found" if credentials is None else f"found ({credentials.method})"
