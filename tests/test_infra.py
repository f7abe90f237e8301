"""infra/: every manifest parses, names only things that exist, matches the pins, and holds no secret or host.

Checked here without a cluster: the Ray cluster-launcher YAML against the JSON schema shipped
inside the ray package, prefect.yaml against Prefect's own model and the process work pool's
job-variable schema, KubeRay resources for Guaranteed QoS and a memory-backed /dev/shm, the
Dockerfiles' Python and package versions against pyproject.toml, and every `python -m X`,
console script, file and dvc stage the manifests name.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from support import REPO  # noqa: E402

INFRA = REPO / "infra"
_spec = importlib.util.spec_from_file_location("ctxemo_infra_render", INFRA / "render.py")
_render_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_render_module)
placeholders, render = _render_module.placeholders, _render_module.render

# Modules the manifests name before they exist (issue 7: the sweep driver and the Prefect flows).
# When a module lands, remove it here: the test fails until then, so the list only ever shrinks.
PLANNED_MODULES: set[str] = set()
# Packages only the MLflow server image installs; everything else must be pinned in pyproject.
SERVER_ONLY_PACKAGES = {"psycopg2-binary"}
# Hosts a manifest may name: loopback/bind-all, documentation placeholders, and names the
# manifests themselves define (compose services, the RayCluster's head service).
GENERIC_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0"}
# Words that stand for a host or bucket in prose and examples.
DOC_PLACEHOLDERS = {"host", "bucket", "your-bucket"}
WORKSPACE = "/workspace/ctxemo"

K8S_MANIFESTS = ["kuberay/workspace-pvc.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-train.yaml",
                 "kuberay/rayjob-sweep.yaml", "prefect/worker.yaml"]
RENDERED = K8S_MANIFESTS + ["ray-cluster-launcher/aws.yaml"]


def load(relative: str, rendered: bool = False):
    text = (INFRA / relative).read_text()
    if rendered:
        text = render(text, {name: f"placeholder-{name.lower().replace('_', '-')}" for name in placeholders(text)})
    return yaml.safe_load(text)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    project = pyproject()["project"]
    for requirement in project["dependencies"] + sum(project.get("optional-dependencies", {}).values(), []):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", requirement.strip())
        assert match, f"pyproject requirement {requirement!r} is not an exact pin"
        found[canonical(match.group(1))] = match.group(3)
    return found


def python_modules(command: str) -> list[str]:
    # `python -m stages.<name>` in prose is a pattern, not a module.
    return re.findall(r"python3?\s+-m\s+([A-Za-z_]\w*(?:\.\w+)*)(?![\w.]*<)", command)


def module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    return spec.get("containers", []) + spec.get("initContainers", [])


def raycluster() -> dict:
    return load("kuberay/raycluster.yaml", rendered=True)


def pod_templates() -> dict[str, dict]:
    cluster = raycluster()["spec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]})
    return templates


# --------------------------------------------------------------------------- parsing, placeholders


def test_every_yaml_file_in_infra_parses_to_a_mapping():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert {str(p.relative_to(INFRA)) for p in files} >= set(RENDERED) | {"prefect/prefect.yaml",
                                                                          "mlflow/compose.yaml"}
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_placeholders_render_and_are_documented():
    readme = (INFRA / "README.md").read_text()
    for relative in RENDERED:
        text = (INFRA / relative).read_text()
        names = placeholders(text)
        for name in names:
            assert f"`{name}`" in readme, f"{relative} uses ${{{name}}}, which infra/README.md does not document"
        assert "${" not in yaml.safe_dump(load(relative, rendered=True)).replace("$${", "")
    assert "CTXEMO_IMAGE" in placeholders((INFRA / "kuberay/raycluster.yaml").read_text())


def test_render_fills_braced_upper_case_names_only_and_refuses_missing_ones():
    text = "image: ${CTXEMO_IMAGE}\ncmd: ray start --address=$RAY_HEAD_IP:6379 $${KEEP} ${lower}\n"
    assert render(text, {"CTXEMO_IMAGE": "reg/ctxemo:abc"}) == (
        "image: reg/ctxemo:abc\ncmd: ray start --address=$RAY_HEAD_IP:6379 $${KEEP} ${lower}\n")
    with pytest.raises(KeyError, match="CTXEMO_IMAGE"):
        render(text, {"CTXEMO_IMAGE": ""})
    done = subprocess.run([sys.executable, str(INFRA / "render.py"), str(INFRA / "kuberay/raycluster.yaml")],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 2 and "CTXEMO_IMAGE" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- KubeRay


def test_raycluster_runs_the_pinned_ray_with_the_project_image():
    cluster = raycluster()
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == pins()["ray"]
    raw = load("kuberay/raycluster.yaml")
    raw_templates = [raw["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in raw["spec"]["workerGroupSpecs"]]
    for template in raw_templates:
        for container in containers(template):
            assert container["image"] == "${CTXEMO_IMAGE}"


def test_every_container_requests_exactly_its_limits():
    resources = [c["resources"] for t in pod_templates().values() for c in containers(t)]
    resources.append(raycluster()["spec"]["autoscalerOptions"]["resources"])
    for manifest in ("kuberay/rayjob-train.yaml", "kuberay/rayjob-sweep.yaml"):
        resources += [c["resources"] for c in containers(load(manifest, True)["spec"]["submitterPodTemplate"])]
    resources += [c["resources"] for c in containers(load("prefect/worker.yaml", True)["spec"]["template"])]
    for spec in resources:
        # str(): YAML reads `cpu: 8` as a number and `cpu: "8"` as text; Kubernetes takes both.
        assert spec["requests"] and {k: str(v) for k, v in spec["requests"].items()} == {
            k: str(v) for k, v in spec["limits"].items()}


def _gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(Mi|Gi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_every_ray_pod_mounts_a_memory_backed_dev_shm_smaller_than_its_memory_limit():
    for name, template in pod_templates().items():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in containers(template):
            shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert len(shm) == 1, f"{name}: no /dev/shm mount"
            empty_dir = volumes[shm[0]["name"]]["emptyDir"]
            assert empty_dir["medium"] == "Memory"
            assert 0 < _gibibytes(empty_dir["sizeLimit"]) < _gibibytes(container["resources"]["limits"]["memory"])


def test_gpu_worker_group_autoscales_within_bounds_and_the_head_trains_nothing():
    spec = raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1
        limits = containers(group["template"])[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_all_pods_share_the_workspace_volume_and_the_settings():
    claim = load("kuberay/workspace-pvc.yaml", True)
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    templates = list(pod_templates().values()) + [load("prefect/worker.yaml", True)["spec"]["template"]]
    for template in templates:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in containers(template):
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/workspace"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            assert set(mounts.values()) <= set(volumes)
            sources = {(next(iter(e)), e[next(iter(e))]["name"]) for e in container["envFrom"]}
            assert sources == {("configMapRef", "ctxemo-settings"), ("secretRef", "ctxemo-s3")}
            secret = next(e["secretRef"] for e in container["envFrom"] if "secretRef" in e)
            assert secret.get("optional") is True  # IRSA / instance roles need no Secret


@pytest.mark.parametrize("manifest, module", [("kuberay/rayjob-train.yaml", "dvc"),
                                              ("kuberay/rayjob-sweep.yaml", "pipelines.sweep")])
def test_rayjobs_run_existing_modules_and_dvc_stages_on_the_cluster(manifest, module):
    job = load(manifest, rendered=True)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster()["metadata"]["name"]}
    entrypoint = job["spec"]["entrypoint"]
    modules = python_modules(entrypoint)
    assert module in modules
    assert f"cd {WORKSPACE}" in entrypoint
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for targets in re.findall(r"python -m dvc (?:pull|push|repro)((?:\s+[\w-]+)+)", entrypoint):
        for target in (word for word in targets.split() if not word.startswith("-")):
            assert target in stages, f"{manifest} names dvc stage {target!r}, which dvc.yaml lacks"
    # DVC decides what is stale: no stage is run behind its back and then forced into dvc.lock
    assert "dvc commit" not in entrypoint and "python -m stages." not in entrypoint
    if manifest.endswith("train.yaml"):
        assert "python -m dvc repro train" in entrypoint and stages["train"]["cmd"] == "python -m stages.train"


def test_every_python_module_the_infra_names_exists_or_is_planned():
    named: set[str] = set()
    for path in [*INFRA.rglob("*.yaml"), INFRA / "README.md", INFRA / "docker" / "Dockerfile"]:
        named.update(python_modules(path.read_text()))
    for entrypoint in (d["entrypoint"] for d in load("prefect/prefect.yaml")["deployments"]):
        named.add(entrypoint.split(":")[0].removesuffix(".py").replace("/", "."))
    assert {"dvc", "pipelines.sweep", "pipelines.flows"} <= named
    for module in sorted(named):
        if module in PLANNED_MODULES:
            assert not module_exists(module), f"{module} exists now: remove it from PLANNED_MODULES"
        else:
            assert module_exists(module), f"infra names `python -m {module}`, which does not exist"
    assert PLANNED_MODULES <= named, "PLANNED_MODULES lists a module no manifest names"


def test_console_scripts_the_manifests_start_are_installed():
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    worker = containers(load("prefect/worker.yaml", True)["spec"]["template"])[0]
    mlflow_command = load("mlflow/compose.yaml")["services"]["mlflow"]["command"]
    for first_word in (worker["command"][0], mlflow_command[0], "ray", "dvc"):
        assert first_word in scripts
    assert "ctxemo" in pyproject()["project"]["scripts"]


# --------------------------------------------------------------------------- Prefect


def test_prefect_yaml_is_valid_for_the_pinned_prefect_and_its_process_pool():
    import jsonschema
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.workers.process import ProcessWorker

    raw = load("prefect/prefect.yaml")
    model = PrefectYamlModel.model_validate(raw)
    assert model.prefect_version == pins()["prefect"]
    variables = ProcessWorker.get_default_base_job_template()["variables"]
    worker_command = containers(load("prefect/worker.yaml", True)["spec"]["template"])[0]["command"]
    pool = worker_command[worker_command.index("--pool") + 1]
    assert worker_command[worker_command.index("--type") + 1] == "process"
    assert model.deployments
    for deployment in model.deployments:
        assert deployment.work_pool.name == pool
        jsonschema.validate(deployment.work_pool.job_variables, {**variables, "additionalProperties": False})
        assert deployment.work_pool.job_variables["working_dir"] == WORKSPACE
        path, function = deployment.entrypoint.split(":")
        module = path.removesuffix(".py").replace("/", ".")
        if module not in PLANNED_MODULES:
            tree = ast.parse((REPO / path).read_text())
            assert function in {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert raw["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": WORKSPACE}}]


def test_prefect_worker_reaches_the_ray_clients_port_of_the_head_service():
    worker = containers(load("prefect/worker.yaml", True)["spec"]["template"])[0]
    env = {e["name"]: e["value"] for e in worker["env"]}
    address = urlsplit(env["RAY_ADDRESS"])
    head = pod_templates()["head"]
    client_port = next(p["containerPort"] for p in containers(head)[0]["ports"] if p["name"] == "client")
    assert (address.scheme, address.hostname, address.port) == (
        "ray", f"{raycluster()['metadata']['name']}-head-svc", client_port)


# --------------------------------------------------------------------------- Ray cluster launcher


def test_cluster_launcher_yaml_validates_against_the_schema_shipped_with_ray():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = load("ray-cluster-launcher/aws.yaml", rendered=True)
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import validate_config

    validate_config(config)
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert all(n["min_workers"] <= n["max_workers"] <= config["max_workers"] for n in workers)
    # Ray fills every command list left out with its defaults, which pip-install a nightly Ray.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        assert key in config
    assert not any("pip install" in c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
                   for c in config[key])
    raw = load("ray-cluster-launcher/aws.yaml")
    assert raw["docker"]["image"] == "${CTXEMO_IMAGE}"
    for local in raw["file_mounts"].values():
        assert (REPO / f"{local}.example").is_file(), f"{local} has no committed example"
        assert subprocess.run(["git", "check-ignore", "-q", local], cwd=REPO).returncode == 0, f"{local} not ignored"


# --------------------------------------------------------------------------- images


def _dockerfile_lines(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_images_use_the_projects_python_and_its_exact_pins():
    requires = pyproject()["project"]["requires-python"]
    minor = re.search(r">=\s*(\d+\.\d+)", requires).group(1)
    pinned = pins()
    dockerfiles = sorted(INFRA.rglob("Dockerfile"))
    assert {p.relative_to(INFRA).as_posix() for p in dockerfiles} == {"docker/Dockerfile", "mlflow/Dockerfile"}
    for path in dockerfiles:
        lines = _dockerfile_lines(path)
        assert f"ARG PYTHON_VERSION={minor}" in lines, path
        assert any(re.fullmatch(r"FROM python:\$\{PYTHON_VERSION\}-slim-\w+", line) for line in lines), path
        for name, version in re.findall(r"\b([A-Za-z][\w.-]*)==([\w.+!-]+)", " ".join(lines)):
            key = canonical(name)
            if key in SERVER_ONLY_PACKAGES:
                continue
            assert pinned.get(key) == version, f"{path.name}: {name}=={version} but pyproject pins {pinned.get(key)}"
    server = " ".join(_dockerfile_lines(INFRA / "mlflow" / "Dockerfile"))
    for package in ("mlflow", "boto3"):
        assert f"{package}=={pinned[package]}" in server


def test_project_image_installs_the_project_from_pyproject_and_copies_only_existing_sources():
    lines = _dockerfile_lines(INFRA / "docker" / "Dockerfile")
    runs = " ".join(line for line in lines if line.startswith("RUN "))
    assert re.search(r"pip install \.(\s|$)", runs) and "pip install --no-deps ." in runs
    # Nothing but the project is pip-installed: every version comes from pyproject.toml.
    for command in re.findall(r"pip install ([^&]*)", runs):
        assert all(arg.startswith("-") or arg == "." for arg in command.split()), command
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text()
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded from the context"
    assert {"models", "core", "stages", "pipelines"} <= {s for c in copies for s in c}
    package_roots = set(pyproject()["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {root.rstrip("*") for root in package_roots} <= {s for c in copies for s in c}


# --------------------------------------------------------------------------- MLflow compose


def test_mlflow_compose_runs_postgres_backend_and_s3_artifacts_from_env():
    compose = load("mlflow/compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow"}
    mlflow = services["mlflow"]
    assert mlflow["env_file"] == ".env" and mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://${MLFLOW_DB_USER}:")
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    destination = next(c for c in command if c.startswith("--artifacts-destination="))
    assert destination.split("=", 1)[1].startswith("s3://${CTXEMO_S3_BUCKET")
    assert not any(c.startswith("--backend-store-uri") for c in command)  # the password stays off argv
    assert mlflow["build"]["dockerfile"] == "Dockerfile" and (INFRA / "mlflow" / "Dockerfile").is_file()
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", services["postgres"]["image"])
    # Every variable compose needs without a default is in the example .env.
    text = (INFRA / "mlflow" / "compose.yaml").read_text()
    required = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?::\?[^}]*)?\}", text))
    example = _env_keys(INFRA / "mlflow" / ".env.example")
    assert required <= example, required - example
    assert subprocess.run(["git", "check-ignore", "-q", "infra/mlflow/.env"], cwd=REPO).returncode == 0


def _env_keys(path: Path, include_commented: bool = False) -> set[str]:
    pattern = r"^#?\s*([A-Z_][A-Z0-9_]*)=" if include_commented else r"^([A-Z_][A-Z0-9_]*)="
    return set(re.findall(pattern, path.read_text(), flags=re.M))


def test_settings_example_covers_the_storage_variables():
    keys = _env_keys(INFRA / "ctxemo.env.example", include_commented=True)
    assert {"CTXEMO_S3_BUCKET", "CTXEMO_S3_PREFIX", "AWS_REGION", "AWS_ENDPOINT_URL_S3",
            "MLFLOW_TRACKING_URI", "PREFECT_API_URL"} <= keys
    assert not keys & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


# --------------------------------------------------------------------------- secrets and hosts

SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY_ID|PRIVATE_KEY)", re.I)
PLACEHOLDER_VALUE = re.compile(r"^(|change-me|<[^>]+>|\$\{[^}]+\}|\$\(\w+\)|your-[\w-]+)$")


def _scanned_files() -> list[Path]:
    files = [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for package in ("models", "core", "stages", "pipelines"):
        files += sorted((REPO / package).rglob("*.py"))
    files += [REPO / name for name in ("dvc.yaml", "params.yaml", "pyproject.toml", "Makefile", ".dvc/config")
              if (REPO / name).is_file()]
    return files


def test_no_credential_is_written_anywhere():
    offenders = []
    for path in _scanned_files() + sorted((REPO / "tests").glob("*.py")):
        text = path.read_text(errors="replace")
        if re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text) or re.search(r"-{5}BEGIN [A-Z ]*PRIVATE KEY-{5}", text):
            offenders.append(f"{path}: key material")
        if path.parent.name == "tests":
            continue
        for key, value in re.findall(r"^\s*#?\s*-?\s*([A-Za-z_][\w.-]*)\s*[:=]\s*(.*?)\s*$", text, flags=re.M):
            if SECRET_NAME.search(key) and not key.startswith("--"):
                value = value.strip("'\"")
                if not PLACEHOLDER_VALUE.match(value) and not value.startswith(("{", "[", "os.environ", "env")):
                    offenders.append(f"{path}: {key} = {value!r}")
        for literal in re.findall(r"(?:secret|password|token)\w*\s*=\s*[\"']([^\"'\s${<][^\"'\s]{7,})[\"']", text,
                                  flags=re.I):
            offenders.append(f"{path}: literal {literal!r}")
    assert not offenders, "\n".join(offenders)


def _allowed_hosts() -> set[str]:
    compose = set(load("mlflow/compose.yaml")["services"])
    return GENERIC_HOSTS | compose | {f"{raycluster()['metadata']['name']}-head-svc"}


def test_no_host_name_is_hard_coded_and_endpoints_come_from_the_environment():
    from core.storage import StorageSettings

    allowed = _allowed_hosts()
    offenders = []
    for path in _scanned_files():
        if path.suffix == ".md":
            continue  # prose may point at documentation sites
        for scheme, rest in re.findall(r"\b([a-z][a-z0-9+]*)://([^\s'\"`)>\],]+)", path.read_text(errors="replace")):
            if scheme in {"file", "sqlite"}:
                continue
            host = re.split(r"[:\[]", rest.split("/")[0].rsplit("@", 1)[-1])[0]
            templated = (not host or any(ch in host for ch in "${<") or host.isupper()
                         or host in DOC_PLACEHOLDERS)
            if scheme == "s3":
                ok = templated
            else:
                ok = templated or host in allowed or host.endswith(".example.com")
            if not ok:
                offenders.append(f"{path.relative_to(REPO)}: {scheme}://{rest}")
        for literal in re.findall(r"endpoint(?:_url|_override|url)?\s*=\s*[\"']([^\"']+)[\"']", path.read_text()):
            offenders.append(f"{path.relative_to(REPO)}: endpoint literal {literal!r}")
    assert not offenders, "\n".join(offenders)
    assert StorageSettings.from_env({}).endpoint_url is None
    assert StorageSettings.from_env({"AWS_ENDPOINT_URL": "http://10.1.2.3:9000"}).endpoint_url == "http://10.1.2.3:9000"


def test_the_dashboard_and_job_api_are_never_published_outside_the_cluster():
    # launcher: the head's dashboard on its own 127.0.0.1 (reached through `ray dashboard`'s SSH tunnel)
    launcher = load("ray-cluster-launcher/aws.yaml", rendered=True)
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host" not in head_start
    # KubeRay: the operator needs the pod IP, behind a Service without an external address
    head = raycluster()["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    for manifest in K8S_MANIFESTS:
        for document in yaml.safe_load_all((INFRA / manifest).read_text()):
            if isinstance(document, dict) and document.get("kind") in ("Service", "Ingress"):
                assert document["kind"] != "Ingress" and document["spec"].get("type", "ClusterIP") == "ClusterIP", manifest
