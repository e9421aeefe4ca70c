"""Every file in cluster/ holds what the tool reading it requires, and the files agree with each other.

A typo here would only show on a real cluster (minutes of GPU time later), so: every YAML parses;
the Ray cluster launcher file passes Ray's own prepare_config + validate_config; the KubeRay
manifests have apiVersion/kind, rayVersion 2.60.0 as a string, string-valued rayStartParams, token
auth, a ClusterIP-only dashboard, resource limits with nvidia.com/gpu on the GPU groups; RayJob
entry points are real semidff commands whose arguments parse and whose worker counts match the
GPU replicas; every image is the one cluster/Dockerfile builds; nothing binds 0.0.0.0.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

import semidff
from jobs.cli import app
from jobs.submit import parse_stage_command
from pipelines.job_submission import load_runtime_env
from semidff.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
CLI = typer.main.get_command(app)  # the semidff app, which `semidff submit` checks a stage against
YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAYJOB_FILES = {"rayjob-cache.yaml": "cache", "rayjob-train.yaml": "train", "rayjob-tune.yaml": "tune"}
RAY_VERSION = "2.60.0"
TOKEN_SECRET = "semidff-ray-token"
DATA_CLAIM = "semidff-data"
IMAGE_WORKDIR = "/home/ray/semidff"  # where the Dockerfile puts the project (configs named by RayJob entry points)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dockerfile_base() -> tuple[str, str, str]:
    """(ray version, python tag, cuda tag) of the Dockerfile's base image, e.g. ("2.60.0", "py311", "cu128")."""
    froms = [line.split()[1] for line in (CLUSTER / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-(cu\d+)", froms[0])
    assert match, f"base image {froms[0]!r} is not rayproject/ray:<version>-py3XX-cuXXX"
    return match.group(1), match.group(2), match.group(3)


def expected_image() -> str:
    _, python, cuda = dockerfile_base()
    return f"registry.example.com/semidff:{semidff.__version__}-{python}-{cuda}"


def walk(node, path=()):
    """Every (path, value) pair of a nested YAML document."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def ray_cluster_specs():
    """(file, RayClusterSpec) for the RayCluster and every RayJob's embedded cluster."""
    for path in KUBERAY_FILES:
        for doc in load_documents(path):
            if doc.get("kind") == "RayCluster":
                yield path.name, doc["spec"]
            elif doc.get("kind") == "RayJob":
                yield path.name, doc["spec"]["rayClusterSpec"]


def containers(spec: dict):
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            yield group, container


# ---------------------------------------------------------------------------------------------


def test_the_expected_files_exist():
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.is_file()}
    assert {"Dockerfile", "README.md", "ray-cluster.yaml", "runtime_env.yaml", "semidff-gpu.yaml", "kuberay/raycluster.yaml",
            *(f"kuberay/{name}" for name in RAYJOB_FILES)} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_yaml_parses_into_mappings(path):
    documents = load_documents(path)
    assert documents and all(isinstance(doc, dict) for doc in documents)


@pytest.mark.parametrize("path", [*YAML_FILES, CLUSTER / "Dockerfile"], ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_nothing_binds_all_interfaces(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        assert "0.0.0.0" not in code, f"{path.name}:{number}: {line.strip()}"


# ------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_builds_on_ray_2_60_with_cuda_torch_and_the_project():
    ray_version, python, cuda = dockerfile_base()
    text = (CLUSTER / "Dockerfile").read_text()
    assert ray_version == RAY_VERSION
    assert re.search(rf"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/{cuda}\b", text), "torch must come from the base image's CUDA index"
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", text)
    assert re.search(r'pip install --no-cache-dir "torch==\$\{TORCH_VERSION\}" --index-url "\$\{TORCH_INDEX_URL\}"', text)
    assert re.search(r"pip install --no-cache-dir \. ", text), "the project itself must be installed (pip install .)"
    assert f"WORKDIR {IMAGE_WORKDIR}" in text
    assert f"docker build -f cluster/Dockerfile -t {expected_image()} ." in text  # the tag the YAMLs name
    copies = " ".join(line for line in text.splitlines() if line.startswith("COPY "))
    for source in ("pyproject.toml", "README.md", "semidff", "pipelines", "jobs", "cluster/semidff-gpu.yaml"):
        assert f" {source} " in copies, f"{source} is not copied into the image"


def test_dockerignore_lets_every_copied_path_through():
    patterns = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = [word for word in line.split()[1:-1] if not word.startswith("--")]
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is copied but .dockerignore leaves it out"


# ------------------------------------------------------------------------------- Cluster launcher


def launcher_config() -> dict:
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())


def test_launcher_config_passes_rays_own_validation():
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(launcher_config())  # merges the provider's defaults, as `ray up` does
    util.validate_config(prepared)  # jsonschema of ray-schema.json: required fields, integer resources, no unknown keys
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_launcher_has_a_cpu_head_and_autoscaling_gpu_workers_on_the_image():
    config = launcher_config()
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [node for node in nodes.values() if node["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(node["min_workers"] == 0 and node["max_workers"] >= 1 for node in gpu_types)
    assert config["docker"]["image"] == expected_image()
    assert "head_image" not in config["docker"] and "worker_image" not in config["docker"]


def test_launcher_turns_token_auth_on_and_keeps_the_dashboard_off_public_interfaces():
    config = launcher_config()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "RAY_AUTH_MODE=token ray start --address" in worker
    assert "--dashboard-host=$(hostname -I" in head  # the private address: worker nodes reach the State API, the internet does not
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


# ------------------------------------------------------------------------------------------ KubeRay


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kubernetes_objects_have_api_version_kind_and_name(path):
    for doc in load_documents(path):
        assert {"apiVersion", "kind", "metadata", "spec"} <= doc.keys(), path.name
        assert DNS_1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1"
        else:
            assert (doc["apiVersion"], doc["kind"]) == ("v1", "PersistentVolumeClaim")
        for where, value in walk(doc):  # no service published outside the Kubernetes cluster, no port on the node's address
            if where and where[-1] in ("serviceType", "type") and isinstance(value, str):
                assert value not in ("LoadBalancer", "NodePort"), f"{path.name}: {'.'.join(map(str, where))}={value}"
            assert not (where and where[-1] in ("hostPort", "hostNetwork") and value), f"{path.name}: {'.'.join(map(str, where))}={value}"


def test_kuberay_files_hold_one_raycluster_and_the_three_rayjobs():
    kinds = {path.name: [doc["kind"] for doc in load_documents(path)] for path in KUBERAY_FILES}
    assert kinds["raycluster.yaml"] == ["RayCluster"]
    for name in RAYJOB_FILES:
        assert kinds[name] == ["RayJob"]
    claims = [doc["metadata"]["name"] for doc in load_documents(CLUSTER / "kuberay" / "storage.yaml")]
    assert claims == [DATA_CLAIM]
    (claim,) = load_documents(CLUSTER / "kuberay" / "storage.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert re.fullmatch(r"\d+(Ki|Mi|Gi|Ti|Pi)", claim["spec"]["resources"]["requests"]["storage"])  # Kubernetes requires a size


@pytest.mark.parametrize("name, spec", list(ray_cluster_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_cluster_spec_version_auth_and_private_dashboard(name, spec):
    assert spec["rayVersion"] == RAY_VERSION and isinstance(spec["rayVersion"], str)
    assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    assert "dashboard-host" not in head["rayStartParams"]
    for group in [head, *spec["workerGroupSpecs"]]:
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values must be strings (KubeRay: map[string]string)"


@pytest.mark.parametrize("name, spec", list(ray_cluster_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_cluster_spec_images_resources_and_gpus(name, spec):
    for group, container in containers(spec):
        assert container["image"] == expected_image(), f"{name}: {container['image']}"
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["limits"].keys() and resources["requests"] == resources["limits"], name
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        assert mounts.get("data") == "/data", name
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == DATA_CLAIM
    assert "nvidia.com/gpu" not in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpu_groups = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert len(gpu_groups) == 1
    for group in spec["workerGroupSpecs"]:
        assert DNS_1123.match(group["groupName"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for container in gpu_groups[0]["template"]["spec"]["containers"]:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("file_name, stage", RAYJOB_FILES.items())
def test_rayjob_ends_itself_and_has_limits(file_name, stage):
    (job,) = load_documents(CLUSTER / "kuberay" / file_name)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert job["metadata"]["labels"]["semidff/stage"] == stage
    assert spec["entrypoint"].split()[:2] == ["semidff", stage]


@pytest.mark.parametrize("file_name, stage", RAYJOB_FILES.items())
def test_rayjob_entrypoint_is_a_valid_semidff_command_sized_to_its_gpus(file_name, stage):
    (job,) = load_documents(CLUSTER / "kuberay" / file_name)
    words = job["spec"]["entrypoint"].split()[1:]
    if stage not in typer.main.get_command(app).commands:
        pytest.skip(f"`semidff {stage}` is not in the CLI yet: its entry point is checked once it is")
    local = [word.replace(IMAGE_WORKDIR, str(REPO)) for word in words]  # the image's copy of the config = the repo's
    command = parse_stage_command(local, REPO, "check", CLI)  # options, required paths, config + overrides, as the CLI parses them
    assert command.stage.split()[0] == stage and command.staged_config is None
    config_path = local[local.index("-c") + 1]
    overrides = [w for w in local if "=" in w and not w.startswith("-")]
    cfg = load_config(config_path, overrides)
    (gpu_group,) = [g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    gpus = gpu_group["replicas"]
    if stage == "cache":
        assert cfg.cache.num_actors * cfg.cache.num_gpus_per_actor == gpus
    elif stage == "train":
        assert cfg.training.num_workers == gpus and cfg.training.use_gpu is True
    else:
        assert cfg.tune.max_concurrent_trials * cfg.training.num_workers == gpus and cfg.training.use_gpu is True


# --------------------------------------------------------------------------- semidff configs, runtime env


def test_gpu_config_asks_for_gpus_explicitly_and_its_cache_serves_every_swept_interval():
    from semidff.sweep_space import parse_search_space

    cfg = load_config(CLUSTER / "semidff-gpu.yaml")
    assert cfg.cache.num_gpus_per_actor >= 1  # autoscaled GPU nodes exist only once something asks for a GPU
    assert cfg.training.use_gpu is True and cfg.teacher_training.use_gpu is True
    intervals = [v for d in parse_search_space(cfg).dimensions if d.key == "video.key_interval" for v in d.values]
    assert intervals and cfg.clips.offset_range[1] >= max(intervals) - 1


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = load_runtime_env(CLUSTER / "runtime_env.yaml")
    assert "working_dir" not in env
    RuntimeEnv(**env, working_dir=str(REPO))  # Ray's own validation of every field


def test_readme_submit_examples_are_valid_commands():
    """Every `semidff submit ... -- STAGE ...` line of cluster/README.md parses as the CLI would parse it."""
    text = (CLUSTER / "README.md").read_text().replace("\\\n", " ")
    examples = [line.split("#")[0].split() for line in text.splitlines() if line.startswith("semidff submit ") and " -- " in line]
    assert len(examples) >= 6
    for words in examples:
        stage_args = [str(REPO / w) if w.startswith("cluster/") else w for w in words[words.index("--") + 1:]]
        command = parse_stage_command(stage_args, REPO, "readme", CLI)
        assert not command.warnings, command.warnings  # every path in them is a cluster path


def test_readme_names_every_file_and_the_submit_commands():
    readme = (CLUSTER / "README.md").read_text()
    for path in [*YAML_FILES, CLUSTER / "Dockerfile"]:
        assert path.relative_to(CLUSTER).as_posix() in readme, path.name
    assert "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265" in readme  # the tunnel / port-forward end
    for stage in ("manifest", "cache", "train", "tune"):
        assert f"semidff submit -- {stage} " in readme or f"semidff submit --no-wait -- {stage} " in readme, stage
    for command in ("semidff job status", "semidff job logs", "semidff job stop"):
        assert command in readme


def test_readme_sizing_guide_is_filled_in():
    sizing = (CLUSTER / "README.md").read_text().split("## Sizing for a YouTube-BB-scale corpus", 1)[1]
    assert "TO FILL" not in sizing
    rows = [line for line in sizing.splitlines() if re.match(r"\| \d+ A10G actors", line)]
    assert len(rows) == 3
    for row in rows:  # every cell a number (or "same"), estimates and CPU figures labelled
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert all(re.search(r"\d", cell) or cell == "same" for cell in cells), row
        assert "(E)" in row and "(CPU)" in row, row
