"""Static checks of deploy/: container images, KubeRay manifests, the cluster-launcher YAML and the
MLflow compose stack.

None of these can be run here (no Docker engine, no Kubernetes, no cloud account), so these tests
check what can be checked without them: every file parses, the search configs validate against
the real schema, every command names the real console script and a registered subcommand, the
config path is where the ConfigMap is mounted, the pieces agree with each other and with
pyproject.toml (versions, extras, resources), nothing is published beyond localhost or ClusterIP,
every Ray cluster asks for a token and (on Kubernetes) lets in only the search's own pods, no
password reaches a command line or a container's configuration, and every image is pinned.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "ray-cluster" / "cluster.yaml"
LAUNCHER_SEARCH = DEPLOY / "ray-cluster" / "search.yaml"
COMPOSE = DEPLOY / "mlflow" / "docker-compose.yaml"
MLFLOW_DOCKERFILE = DEPLOY / "mlflow" / "Dockerfile"
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "cuda": DEPLOY / "docker" / "Dockerfile.cuda"}
PIN_DIGESTS = DEPLOY / "pin-digests.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GPU = "nvidia.com/gpu"
APP_LABEL = "app.kubernetes.io/name"
RAY_AUTH_SECRET = "cmpnas-ray-auth"       # the Secret holding the Ray token, key auth_token (as KubeRay wants it)
# The head ports clients use: GCS, dashboard (with the Jobs API, which runs code), Ray client server.
RAY_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


# ---------------------------------------------------------------- helpers


def yaml_files() -> list[Path]:
    return sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})


def load_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kube_docs() -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_docs(path)]


def one(kind: str) -> dict:
    found = [doc for doc in kube_docs() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kuberay, found {len(found)}"
    return found[0]


def walk(node):
    """Every mapping inside a parsed YAML document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def pinned_version(package: str) -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def cluster_specs() -> dict[str, dict]:
    """The Ray cluster spec of the RayJob and of the RayCluster."""
    return {"RayJob": one("RayJob")["spec"]["rayClusterSpec"], "RayCluster": one("RayCluster")["spec"]}


def group_pods(spec: dict) -> dict[str, dict]:
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({group["groupName"]: group["template"]["spec"] for group in spec["workerGroupSpecs"]})
    return pods


def configmap_tree() -> dict:
    return yaml.safe_load(one("ConfigMap")["data"]["search.yaml"])


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return instructions


def _distribution(requirement: str) -> str:
    """``faiss-cpu>=1.8,<1.16`` -> ``faiss-cpu``."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def faiss_builds(pip_commands: list[str]) -> set[str]:
    """The FAISS distributions these pip commands install, via the extras of pyproject.toml."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    builds = set()
    for command in pip_commands:
        for group in re.findall(r"\.\[([^\]]+)\]", command):
            for extra in (name.strip() for name in group.split(",")):
                assert extra in extras, f"extra {extra!r} is not declared in pyproject.toml"
                builds |= {_distribution(dep) for dep in extras[extra] if dep.startswith("faiss")}
        builds |= set(re.findall(r"\bfaiss-(?:cpu|gpu)\b", command))
    return builds


def click_app():
    import typer

    from orchestrator.cli import app

    return typer.main.get_command(app)


def check_cmpnas_argv(argv: list[str], where: str) -> None:
    """argv runs the installed console script and a registered subcommand with its real options."""
    assert argv and argv[0] == "cmpnas", f"{where}: the command word must be `cmpnas`, got {argv[:1]}"
    assert "cmpnas" in PYPROJECT["project"]["scripts"], "pyproject.toml [project.scripts] lacks `cmpnas`"
    group = click_app()
    if len(argv) == 1 or argv[1].startswith("-"):
        return
    command = group.commands.get(argv[1])
    assert command is not None, f"{where}: `cmpnas {argv[1]}` is not a command; known: {sorted(group.commands)}"
    rest = argv[2:]
    if hasattr(command, "commands") and rest and not rest[0].startswith("-"):  # e.g. `cmpnas gallery train`
        assert rest[0] in command.commands, f"{where}: `cmpnas {argv[1]} {rest[0]}` is not a command"
        command, rest = command.commands[rest[0]], rest[1:]
    options = {opt for param in command.params for opt in param.opts} | {"--help"}
    for token in rest:
        if token.startswith("-"):
            assert token.split("=")[0] in options, f"{where}: {token} is not an option of `cmpnas {argv[1]}`"


def option_value(argv: list[str], name: str) -> str:
    for index, token in enumerate(argv):
        if token == name:
            return argv[index + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def ray_pods() -> dict[str, dict]:
    """Every pod template that runs Ray: head and worker groups of both clusters, and the pod of the
    RayJob that runs `ray job submit` against the dashboard."""
    pods = {f"{name}/{group}": pod for name, spec in cluster_specs().items() for group, pod in group_pods(spec).items()}
    submitter = one("RayJob")["spec"].get("submitterPodTemplate")
    assert submitter, "the RayJob names its submitter pod (labels for the NetworkPolicy, token for the Jobs API)"
    pods["RayJob/submitter"] = submitter["spec"]
    return pods


def pod_labels() -> dict[str, dict]:
    """The labels of each pod template of ray_pods(); KubeRay keeps them on the pods it creates."""
    labels = {}
    for name, spec in cluster_specs().items():
        templates = [("head", spec["headGroupSpec"]["template"])]
        templates += [(group["groupName"], group["template"]) for group in spec["workerGroupSpecs"]]
        labels.update({f"{name}/{group}": template["metadata"].get("labels", {}) for group, template in templates})
    labels["RayJob/submitter"] = one("RayJob")["spec"]["submitterPodTemplate"]["metadata"].get("labels", {})
    return labels


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) applied to a pod's labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
                   "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not matched:
            return False
    return True


def split_image(reference: str) -> tuple[str, str, str]:
    """NAME[:TAG][@DIGEST] -> (name, tag, digest); a registry's :port stays in the name."""
    name, _, digest = reference.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest


def dockerfile_bases(path: Path) -> list[str]:
    """The FROM images of a Dockerfile, with the defaults of its ARGs filled in."""
    instructions = dockerfile_instructions(path)
    args = dict(arg.split("=", 1) for keyword, arg in instructions if keyword == "ARG" and "=" in arg)
    bases = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            image = [token for token in arguments.split() if not token.startswith("--")][0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], image))
    return bases


def image_references() -> list[tuple[str, str]]:
    """(where, reference) of every container image that deploy/ runs or builds on."""
    found = [(f"compose {name}", service["image"])
             for name, service in load_docs(COMPOSE)[0]["services"].items() if "image" in service]
    for path in sorted(DEPLOY.rglob("Dockerfile*")):
        found += [(path.relative_to(DEPLOY).as_posix(), base) for base in dockerfile_bases(path)]
    for where, pod in ray_pods().items():
        found += [(where, container["image"]) for container in [*pod.get("initContainers", []), *pod["containers"]]]
    docker = load_docs(LAUNCHER)[0]["docker"]
    found += [(f"launcher {key}", docker[key]) for key in ("image", "head_image", "worker_image") if key in docker]
    return found


def shell_text(value) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value or "")


def dockerignore_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: `*` and `?` stop at `/`, `**` crosses folders."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relative` (or a folder above it) out of the build context: the last
    matching pattern wins and `!` takes a path back in."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(path) for path in candidates):
            excluded = not negate
    return excluded


def copy_sources(path: Path) -> list[str]:
    """The build-context paths that a Dockerfile's COPY and ADD instructions read."""
    sources = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword in {"COPY", "ADD"}:
            tokens = [token for token in arguments.split() if not token.startswith("--")]
            sources += tokens[:-1]
    return sources


# ---------------------------------------------------------------- every file


def test_deploy_has_the_expected_files():
    expected = {
        "docker/Dockerfile.cpu", "docker/Dockerfile.cuda", "kuberay/configmap.yaml", "kuberay/rayjob.yaml",
        "kuberay/raycluster.yaml", "kuberay/pvc.yaml", "kuberay/networkpolicy.yaml", "ray-cluster/cluster.yaml",
        "mlflow/docker-compose.yaml", "mlflow/.env.example", "mlflow/Dockerfile", "mlflow/.dockerignore",
        "mlflow/mlflow-entrypoint.sh", "mlflow/minio-mlflow-policy.json", "mlflow/basic_auth.ini", "pin-digests.sh",
    }
    present = {path.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("*") if path.is_file()}
    assert expected <= present, f"missing: {sorted(expected - present)}"
    assert (ROOT / "docs" / "deploy.md").is_file() and (ROOT / ".dockerignore").is_file()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda path: path.relative_to(DEPLOY).as_posix())
def test_every_yaml_parses(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


def test_kubernetes_objects_are_well_formed_and_in_one_namespace():
    docs = kube_docs()
    assert {doc["kind"] for doc in docs} >= {"ConfigMap", "RayJob", "RayCluster", "PersistentVolumeClaim"}
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), doc.get("kind")
    for kind in ("RayJob", "RayCluster"):
        assert one(kind)["apiVersion"] == "ray.io/v1"
    assert len({doc["metadata"].get("namespace") for doc in docs}) == 1, "all objects belong in one namespace"


# ---------------------------------------------------------------- search configs


def test_configmap_search_config_validates_against_the_schema():
    from orchestrator.config import validate_config
    from orchestrator.config.schema import RayConfig

    config = validate_config(configmap_tree(), source="deploy/kuberay/configmap.yaml search.yaml")
    assert "'auto'" in (RayConfig.model_fields["address"].description or ""), "ray.address no longer documents 'auto'"
    assert config.ray.address == "auto", "the driver runs on the head pod and must join that cluster"
    assert config.resources.gpus_per_trial > 0
    assert config.tracking.uri and config.tracking.uri.startswith("http"), "a cluster needs an MLflow server"


def test_launcher_search_config_validates_against_the_schema():
    from orchestrator.config import load_config

    config = load_config(LAUNCHER_SEARCH)
    assert config.ray.address == "auto"
    assert config.resources.gpus_per_trial > 0


def test_trials_fit_the_gpu_worker_group():
    config = configmap_tree()
    resources, search = config["resources"], config["search"]
    for name, spec in cluster_specs().items():
        slots_cpu = slots_gpu = 0.0
        for group in spec["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            cpus, gpus = float(limits["cpu"]), float(limits.get(GPU, 0))
            # Like orchestrator.setup.ray_cluster.check_fits: one node must hold a whole trial.
            if cpus >= resources["cpus_per_trial"] and gpus >= resources["gpus_per_trial"]:
                per_node = min(cpus // resources["cpus_per_trial"],
                               gpus // resources["gpus_per_trial"] if resources["gpus_per_trial"] else cpus)
                slots_cpu += group["replicas"] * per_node
                slots_gpu += group["replicas"] * gpus
            assert group.get("minReplicas", group["replicas"]) == group["replicas"], (
                f"{name}/{group['groupName']}: cmpnas checks at start that a trial fits on a live node; "
                "keep the group's workers up (minReplicas = replicas)")
        assert slots_cpu >= search["max_concurrent"], f"{name}: fewer trial slots than search.max_concurrent"
        assert slots_gpu >= search["max_concurrent"] * resources["gpus_per_trial"]

    launcher = load_docs(LAUNCHER)[0]
    worker = launcher["available_node_types"]["gpu_worker"]
    limits = yaml.safe_load(LAUNCHER_SEARCH.read_text())["resources"]
    assert worker["resources"]["CPU"] >= limits["cpus_per_trial"] and worker["resources"]["GPU"] >= limits["gpus_per_trial"]
    assert worker["min_workers"] == worker["max_workers"] >= 1, "GPU workers must be up when a search starts"


# ---------------------------------------------------------------- commands


def test_rayjob_entrypoint_runs_a_registered_cmpnas_command():
    argv = shlex.split(one("RayJob")["spec"]["entrypoint"])
    check_cmpnas_argv(argv, "RayJob entrypoint")
    assert argv[1] == "search"
    assert "search" in click_app().commands
    # Re-applied after a lost head, the RayJob must continue the search recorded in output_dir (on
    # the PVC) rather than refuse to start over it; a first run starts a new search.
    assert "--resume-if-unfinished" in argv, "the RayJob entrypoint must pass --resume-if-unfinished"


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_entrypoint_is_the_console_script(flavor):
    instructions = dockerfile_instructions(DOCKERFILES[flavor])
    entrypoints = [json.loads(args) for keyword, args in instructions if keyword == "ENTRYPOINT"]
    commands = [json.loads(args) for keyword, args in instructions if keyword == "CMD"]
    assert entrypoints and entrypoints[-1] == ["cmpnas"], "ENTRYPOINT must be the exec form [\"cmpnas\"]"
    check_cmpnas_argv(entrypoints[-1] + (commands[-1] if commands else []), f"Dockerfile.{flavor}")


def test_config_path_of_the_entrypoint_is_the_mounted_configmap_key():
    configmap = one("ConfigMap")
    config_path = PurePosixPath(option_value(shlex.split(one("RayJob")["spec"]["entrypoint"]), "--config"))
    for name, spec in cluster_specs().items():
        head = spec["headGroupSpec"]["template"]["spec"]  # the entrypoint runs on the head as the driver
        volumes = {volume["name"]: volume for volume in head["volumes"]}
        container = head["containers"][0]
        matches = []
        for mount in container.get("volumeMounts", []):
            mount_path = PurePosixPath(mount["mountPath"])
            source = volumes[mount["name"]].get("configMap")
            if source is None or source["name"] != configmap["metadata"]["name"]:
                continue
            if "subPath" in mount:
                if mount_path == config_path:
                    matches.append(mount["subPath"])
                continue
            if mount_path in config_path.parents:
                relative = config_path.relative_to(mount_path).as_posix()
                items = source.get("items")
                keys = [item["key"] for item in items if item["path"] == relative] if items else [relative]
                matches.extend(keys)
        assert matches, f"{name}: {config_path} is not inside a mount of ConfigMap {configmap['metadata']['name']}"
        assert all(key in configmap["data"] for key in matches), f"{name}: {matches} not keys of the ConfigMap"


def test_commands_in_the_docs_are_registered():
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    checked = 0
    for line in "\n".join(blocks).splitlines():
        line = line.split("  #")[0].strip().rstrip("\\").strip()
        try:
            argv = shlex.split(line)
        except ValueError:
            continue
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv and PurePosixPath(argv[0]).name == "cmpnas":
            check_cmpnas_argv(["cmpnas", *argv[1:]], f"docs/deploy.md: {line}")
            checked += 1
    assert checked, "docs/deploy.md shows no cmpnas command"


# ---------------------------------------------------------------- images and installs


@pytest.mark.parametrize("flavor, extra, faiss", [("cpu", "cpu", "faiss-cpu"), ("cuda", "gpu", "faiss-gpu")])
def test_dockerfiles_install_one_faiss_build(flavor, extra, faiss):
    onnxruntime = "onnxruntime" if extra == "cpu" else "onnxruntime-gpu"  # never both: one import folder
    assert [_distribution(dep) for dep in PYPROJECT["project"]["optional-dependencies"][extra]] == [faiss, onnxruntime]
    assert not any(_distribution(dep).startswith("onnxruntime") for dep in PYPROJECT["project"]["dependencies"])
    runs = [args for keyword, args in dockerfile_instructions(DOCKERFILES[flavor]) if keyword == "RUN"]
    pip = [run for run in runs if "pip install" in run]
    assert pip, f"Dockerfile.{flavor} does not pip-install cmpnas"
    assert any(f".[{extra}]" in run for run in pip), f"Dockerfile.{flavor} must install '.[{extra}]'"
    assert faiss_builds(pip) == {faiss}, f"Dockerfile.{flavor} installs {faiss_builds(pip)}; exactly {faiss} is wanted"


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfiles_run_as_non_root_on_the_pinned_ray(flavor):
    instructions = dockerfile_instructions(DOCKERFILES[flavor])
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must end as a non-root user"
    args = dict(arg.split("=", 1) for keyword, arg in instructions if keyword == "ARG" and "=" in arg)
    assert args.get("RAY_VERSION") == pinned_version("ray"), "RAY_VERSION must equal the ray pin of pyproject.toml"
    base = dockerfile_bases(DOCKERFILES[flavor])[-1]
    name, tag, _ = split_image(base)
    assert "py311" in tag or "3.11" in tag, f"{base}: Python 3.11 expected"
    if name == "rayproject/ray":  # written out literally once pinned to a digest (deploy/pin-digests.sh)
        assert tag.startswith(pinned_version("ray") + "-"), f"{base}: the Ray image must be of the ray pin"
    if flavor == "cuda":
        assert name in {"nvidia/cuda", "rayproject/ray"} and ("gpu" in tag or "cuda" in tag), base


def test_launcher_installs_one_faiss_build_per_node_type():
    launcher = load_docs(LAUNCHER)[0]
    common = launcher.get("setup_commands", [])
    head = faiss_builds(common + launcher.get("head_setup_commands", []))
    worker = faiss_builds(common + launcher.get("worker_setup_commands", []))
    assert head == {"faiss-cpu"} and worker == {"faiss-gpu"}, (head, worker)
    ray = pinned_version("ray")
    docker = launcher["docker"]
    assert ray in docker["head_image"] and ray in docker["worker_image"] and "gpu" in docker["worker_image"]
    assert launcher["file_mounts"], "the repository must be synced to the nodes"


def test_launcher_config_matches_rays_own_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load_docs(LAUNCHER)[0], schema)


def test_images_and_versions_agree_with_pyproject():
    version, ray = PYPROJECT["project"]["version"], pinned_version("ray")
    for name, spec in cluster_specs().items():
        assert spec["rayVersion"] == ray, f"{name}: rayVersion must equal the ray pin"
        for group, pod in group_pods(spec).items():
            image = pod["containers"][0]["image"]
            assert re.fullmatch(rf"ghcr\.io/cmpnas/cmpnas:{re.escape(version)}-(cpu|cuda)(@{DIGEST.pattern})?", image), (
                f"{name}/{group}: {image}")
    submitter = ray_pods()["RayJob/submitter"]["containers"][0]["image"]
    head = cluster_specs()["RayJob"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert submitter == head, "the submitter runs `ray job submit` of the head's image: same Ray"
    mlflow = pinned_version("mlflow")
    compose = load_docs(COMPOSE)[0]
    assert str(compose["services"]["mlflow"]["build"]["args"]["MLFLOW_VERSION"]) == mlflow
    assert f"ARG MLFLOW_VERSION={mlflow}" in (DEPLOY / "mlflow" / "Dockerfile").read_text()


# ---------------------------------------------------------------- cluster shape


def test_rayjob_and_raycluster_have_the_same_groups():
    job, cluster = cluster_specs()["RayJob"], cluster_specs()["RayCluster"]
    assert job["headGroupSpec"] == cluster["headGroupSpec"]
    assert job["workerGroupSpecs"] == cluster["workerGroupSpecs"]
    assert job.get("authOptions") == cluster.get("authOptions")
    assert one("RayJob")["spec"]["shutdownAfterJobFinishes"] is True


def test_gpu_worker_group_requests_gpus_and_the_head_none():
    for name, spec in cluster_specs().items():
        gpu_groups = [group for group in spec["workerGroupSpecs"]
                      if int(group["template"]["spec"]["containers"][0]["resources"].get("limits", {}).get(GPU, 0)) >= 1]
        assert gpu_groups, f"{name}: no worker group limits {GPU}"
        for group in gpu_groups:
            assert split_image(group["template"]["spec"]["containers"][0]["image"])[1].endswith("-cuda"), group["groupName"]
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        assert GPU not in head.get("limits", {}), f"{name}: the head needs no GPU"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{name}: no trials on the head"


def test_every_pod_runs_non_root():
    for where, pod in ray_pods().items():
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) != 0, where


def test_every_container_runs_locked_down_with_writable_scratch_only():
    """No capabilities, no privilege escalation, the runtime's seccomp filter, a read-only root file
    system; /tmp (Ray's temp dir, /tmp/ray) on an emptyDir so that Ray can still write its sockets,
    logs and spilled objects."""
    for where, pod in ray_pods().items():
        pod_context = pod.get("securityContext", {})
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            label = f"{where}/{container['name']}"
            context = container.get("securityContext", {})
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{label}: seccompProfile RuntimeDefault"
            assert context.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation: false"
            assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities.drop: [ALL]"
            assert not context.get("capabilities", {}).get("add"), f"{label}: no capability added"
            assert context.get("privileged") is not True, label
            assert context.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem: true"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, label
            scratch = {PurePosixPath(mount["mountPath"]): volumes[mount["name"]]
                       for mount in container.get("volumeMounts", []) if "emptyDir" in volumes[mount["name"]]}
            assert PurePosixPath("/tmp") in scratch, f"{label}: /tmp (Ray's temp dir) must be an emptyDir"
            assert scratch[PurePosixPath("/tmp")]["emptyDir"].get("sizeLimit"), f"{label}: bound /tmp (sizeLimit)"


def test_output_dir_is_on_a_volume_every_node_shares():
    claim = one("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "every pod mounts it at once: ReadWriteMany"
    output_dir = PurePosixPath(configmap_tree()["output_dir"])
    for name, spec in cluster_specs().items():
        for group, pod in group_pods(spec).items():
            claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
                      for volume in pod["volumes"] if "persistentVolumeClaim" in volume}
            shared = [mount for mount in pod["containers"][0]["volumeMounts"]
                      if claims.get(mount["name"]) == claim["metadata"]["name"]
                      and PurePosixPath(mount["mountPath"]) in output_dir.parents]
            assert shared, f"{name}/{group}: output_dir {output_dir} is not on PVC {claim['metadata']['name']}"


def test_mlflow_credentials_travel_over_tls_only():
    """The driver sends MLflow's user name and password with every request (basic auth): the
    tracking URI is https, and the server is checked against a CA mounted from a ConfigMap."""
    from mlflow.environment_variables import MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH

    uri = configmap_tree()["tracking"]["uri"]
    assert uri.startswith("https://"), f"tracking.uri {uri}: credentials would cross the cluster network in clear"
    for name, spec in cluster_specs().items():
        head = spec["headGroupSpec"]["template"]["spec"]
        container = head["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert MLFLOW_TRACKING_INSECURE_TLS.name not in env, f"{name}: the server's certificate must be checked"
        ca = PurePosixPath(env[MLFLOW_TRACKING_SERVER_CERT_PATH.name]["value"])
        volumes = {volume["name"]: volume for volume in head["volumes"]}
        mounts = [mount for mount in container["volumeMounts"] if PurePosixPath(mount["mountPath"]) == ca.parent]
        assert mounts and mounts[0].get("readOnly") is True, f"{name}: {ca} is not in a read-only mount"
        source = volumes[mounts[0]["name"]].get("configMap", {})
        assert [item["path"] for item in source.get("items", []) if item["key"] == "ca.crt"] == [ca.name], (
            f"{name}: {ca} must be the key ca.crt of a ConfigMap")


def test_mlflow_credentials_come_from_a_secret():
    for name, spec in cluster_specs().items():
        env = {item["name"]: item for item in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert variable in env, f"{name}: the driver (head) lacks {variable}"
            assert "value" not in env[variable] and env[variable]["valueFrom"]["secretKeyRef"]["name"], variable
    assert not [doc for doc in kube_docs() if doc.get("kind") == "Secret"], "no Secret is committed"


# ---------------------------------------------------------------- exposure and secrets


def test_nothing_is_published_outside_the_cluster():
    """No Ingress, LoadBalancer or NodePort, compose ports on localhost. That keeps the Ray heads off
    the outside world only: every pod of the Kubernetes cluster still reaches a ClusterIP Service.
    Who else may connect is decided by token auth and the NetworkPolicy (the tests below)."""
    for path in yaml_files():
        for doc in load_docs(path):
            for node in walk(doc):
                where = f"{path.relative_to(DEPLOY)}"
                assert node.get("kind") not in {"Ingress", "Gateway", "HTTPRoute"}, f"{where}: {node.get('kind')}"
                if node.get("kind") == "Service":
                    assert node.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where
                if "serviceType" in node:
                    assert node["serviceType"] == "ClusterIP", f"{where}: serviceType {node['serviceType']}"
                for key in ("type", "serviceType"):
                    assert node.get(key) not in {"LoadBalancer", "NodePort"}, f"{where}: {key}={node.get(key)}"


def test_ray_token_auth_is_on_for_every_ray_container():
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE", "the installed Ray reads another variable"
    for name, spec in cluster_specs().items():
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token", f"{name}: authOptions.mode must be token"
        assert auth.get("secretName") == RAY_AUTH_SECRET, (
            f"{name}: authOptions.secretName must name the Secret of the token, so that the operator uses it too")
    pods = ray_pods()
    assert {"RayJob/head", "RayCluster/head", "RayJob/submitter"} <= set(pods) and len(pods) >= 5
    for where, pod in pods.items():
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            label = f"{where}/{container['name']}"
            env = {item["name"]: item for item in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{label}: RAY_AUTH_MODE must be token"
            token = env.get("RAY_AUTH_TOKEN", {})
            assert "value" not in token, f"{label}: the token belongs in the Secret, not in the manifest"
            assert token.get("valueFrom", {}).get("secretKeyRef") == {"name": RAY_AUTH_SECRET, "key": "auth_token"}, (
                f"{label}: RAY_AUTH_TOKEN must come from Secret {RAY_AUTH_SECRET}, key auth_token")
    assert not [doc for doc in kube_docs() if doc.get("kind") == "Secret"], "no Secret (and no token) is committed"


def test_network_policy_admits_only_the_searchs_own_pods():
    policies = [doc for doc in kube_docs() if doc.get("kind") == "NetworkPolicy"]
    assert policies, "deploy/kuberay needs a NetworkPolicy: a ClusterIP Service is open to every pod of the cluster"
    for name, spec in cluster_specs().items():
        ports = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
        assert {port["name"]: port["containerPort"] for port in ports} == RAY_HEAD_PORTS, name
    labels = pod_labels()
    for where, pod in labels.items():
        assert pod.get(APP_LABEL) == "cmpnas", f"{where}: the NetworkPolicy knows the search's pods by {APP_LABEL}"
        restricting = [policy for policy in policies if selects(policy["spec"]["podSelector"], pod)
                       and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])]
        assert restricting, f"{where}: no NetworkPolicy restricts who may connect to it"

    for policy in policies:
        spec = policy["spec"]
        if not any(selects(spec["podSelector"], pod) for pod in labels.values()):
            continue
        own_rules = []
        for rule in spec.get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: an ingress rule without `from` admits everyone"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"an ipBlock admits pods and hosts by address: {peer}"
                if "namespaceSelector" not in peer:
                    # Pods of the policy's namespace: the search's own, and every one of them (they
                    # talk to each other on ports picked at random).
                    selector = peer.get("podSelector", {})
                    assert selector.get("matchLabels", {}).get(APP_LABEL) == "cmpnas", f"only the search's pods: {peer}"
                    assert all(selects(selector, pod) for pod in labels.values()), f"{peer} leaves out some Ray pods"
                    own_rules.append(rule)
                else:
                    # Another namespace: only the KubeRay operator, which polls a RayJob's status from the
                    # dashboard, and only there. Both selectors in one element (a pod must match both),
                    # and the namespace named: `namespaceSelector: {}` would admit a pod of any namespace
                    # that anyone labels as the operator.
                    assert peer.get("podSelector", {}).get("matchLabels") == {
                        "app.kubernetes.io/component": "kuberay-operator"}, f"unexpected peer {peer}"
                    namespaces = peer["namespaceSelector"]
                    assert set(namespaces) == {"matchLabels"} and list(namespaces["matchLabels"]) == [
                        "kubernetes.io/metadata.name"] and namespaces["matchLabels"]["kubernetes.io/metadata.name"], (
                        f"the operator's peer must name its namespace (kubernetes.io/metadata.name): {peer}")
                    assert not selects(namespaces, {"kubernetes.io/metadata.name": "attacker"}), peer
                    admitted = {(port.get("protocol", "TCP"), port["port"]) for port in rule.get("ports", [])}
                    assert admitted == {("TCP", RAY_HEAD_PORTS["dashboard"])}, f"the operator needs the dashboard only: {rule}"
        assert own_rules, f"{policy['metadata']['name']}: the Ray pods must admit each other"
        for rule in own_rules:
            if rule.get("ports"):  # a rule without ports admits every port
                admitted = {port["port"] for port in rule["ports"]}
                assert set(RAY_HEAD_PORTS.values()) <= admitted, f"GCS, dashboard and client ports must be admitted: {rule}"


def test_compose_ports_are_bound_to_localhost():
    services = load_docs(COMPOSE)[0]["services"]
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is not bound to 127.0.0.1"
    assert published and "ports" in services["mlflow"]


def test_launcher_keeps_the_dashboard_private():
    launcher = load_docs(LAUNCHER)[0]
    for rule in launcher["provider"].get("security_group", {}).get("IpPermissions", []):
        assert rule.get("FromPort") == rule.get("ToPort") == 22, f"only SSH may be opened: {rule}"
    start = " ".join(launcher.get("head_start_ray_commands", []))
    assert "--dashboard-host=0.0.0.0" not in start


def test_launcher_turns_token_auth_on_on_every_node():
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR, _get_default_token_path

    launcher = load_docs(LAUNCHER)[0]
    docker = launcher["docker"]
    for kind in ("head", "worker"):
        options = [*docker.get("run_options", []), *docker.get(f"{kind}_run_options", [])]
        assert any(re.fullmatch(rf"(--env|-e)[ =]{AUTH_MODE_ENV_VAR}=token", option.strip()) for option in options), (
            f"the {kind} containers must run with {AUTH_MODE_ENV_VAR}=token")
    start = " ".join(launcher.get("head_start_ray_commands", []) + launcher.get("worker_start_ray_commands", []))
    assert f"{AUTH_MODE_ENV_VAR}=" not in start, "RAY_AUTH_MODE is set once, for the whole container"
    # Every node gets the token at the path Ray reads by default (~/.ray/auth_token of its user).
    default = PurePosixPath("~") / _get_default_token_path().relative_to(Path.home()).as_posix()
    assert str(default) in launcher["file_mounts"], f"file_mounts must put the token at {default} on every node"


# ---------------------------------------------------------------- compose: secrets and credentials


def compose_services() -> dict:
    return load_docs(COMPOSE)[0]["services"]


def test_no_password_on_a_compose_command_line():
    """`ps` shows every process's arguments and `docker inspect` a container's command: neither may
    hold a password, whether written in or interpolated by compose."""
    for name, service in compose_services().items():
        texts = {key: shell_text(service.get(key)) for key in ("command", "entrypoint")}
        texts["healthcheck"] = shell_text(service.get("healthcheck", {}).get("test"))
        for key, text in texts.items():
            names = re.findall(r"\$+\{?([A-Za-z_][A-Za-z0-9_]*)", text)
            leaked = sorted({variable for variable in names if SECRET_NAME.search(variable) and not variable.endswith("_FILE")})
            assert not leaked, f"{name}.{key} puts {leaked} on a command line"
            assert not re.search(r"://[^\s/@]+:[^\s/@]+@", text), f"{name}.{key}: a URI with credentials on a command line"
            for line in text.splitlines():
                if re.search(r"\bmc admin user add\b", line):
                    assert re.search(r"<\s*/run/secrets/\w+\s*$", line), f"{name}: the secret key goes to mc on stdin: {line}"
    command = compose_services()["mlflow"]["command"]
    assert not [token for token in command if token.startswith("--backend-store-uri")], (
        "the backend store URI holds the database password: the image's entrypoint passes it in the environment")


def test_compose_secrets_are_files():
    compose = load_docs(COMPOSE)[0]
    declared = compose.get("secrets", {})
    assert declared, "passwords and keys are Docker secrets"
    for secret, source in declared.items():
        assert set(source) == {"file"} and PurePosixPath(source["file"]).parts[0] == "secrets", (
            f"secret {secret}: a file under deploy/mlflow/secrets/, not an environment variable")
    ignored = (DEPLOY / "mlflow" / ".gitignore").read_text().split()
    assert ".env" in ignored and "secrets/" in ignored, "deploy/mlflow/.env and secrets/ stay out of git"
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        mounted = set(service.get("secrets", []))
        assert mounted <= set(declared), f"{name}: secrets {sorted(mounted - set(declared))} are not declared"
        for key, value in environment.items():
            assert not re.search(r"\$\{[A-Za-z0-9_]*(PASSWORD|SECRET|TOKEN)", str(value), re.IGNORECASE), f"{name}.{key}"
            if SECRET_NAME.search(key):
                path = PurePosixPath(str(value))
                assert key.endswith("_FILE") and path.parent == PurePosixPath("/run/secrets") and path.name in mounted, (
                    f"{name}.{key}: `docker inspect` shows the environment; pass a *_FILE naming a mounted secret")
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (DEPLOY / "mlflow" / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert used <= example, f".env.example lacks {sorted(used - example)}"
    assert not [key for key in example if SECRET_NAME.search(key)], ".env holds no password: those are secret files"


def test_mlflow_reads_the_database_password_from_a_file():
    services = compose_services()
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert services["mlflow"]["environment"]["POSTGRES_PASSWORD_FILE"] == services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"]
    instructions = dockerfile_instructions(MLFLOW_DOCKERFILE)
    entrypoint = json.loads([arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"][-1])
    copies = [arguments.split() for keyword, arguments in instructions if keyword == "COPY" and "mlflow-entrypoint.sh" in arguments]
    assert copies and entrypoint == [copies[-1][-1]], "the image's ENTRYPOINT is mlflow-entrypoint.sh"
    from mlflow.cli import server

    option = next(param for param in server.params if "--backend-store-uri" in param.opts)
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI", "mlflow server no longer reads the URI from the environment"
    assert "export MLFLOW_BACKEND_STORE_URI" in (DEPLOY / "mlflow" / "mlflow-entrypoint.sh").read_text()


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_mlflow_entrypoint_hands_the_secrets_over_in_the_environment(tmp_path):
    script = DEPLOY / "mlflow" / "mlflow-entrypoint.sh"
    (tmp_path / "postgres_password").write_text("abc-DEF_123\n")
    (tmp_path / "s3_key").write_text("s3-secret-key\n")
    env = {"PATH": os.environ["PATH"], "POSTGRES_USER": "mlflow", "POSTGRES_HOST": "postgres", "POSTGRES_DB": "mlflow",
           "POSTGRES_PASSWORD_FILE": str(tmp_path / "postgres_password"), "MLFLOW_S3_SECRET_KEY_FILE": str(tmp_path / "s3_key")}
    (tmp_path / "admin").write_text("admin-pass\n")
    (tmp_path / "flask").write_text("csrf-key\n")
    env.update({"MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "admin"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(tmp_path / "flask")})
    show = ["sh", "-c", 'printf "%s\\n%s\\n%s\\n%s\\n%s" "$MLFLOW_BACKEND_STORE_URI" "$AWS_SECRET_ACCESS_KEY" '
            '"$MLFLOW_AUTH_ADMIN_PASSWORD" "$MLFLOW_FLASK_SERVER_SECRET_KEY" "$*"', "sh", "server"]
    done = subprocess.run(["sh", str(script), *show], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["postgresql://mlflow:abc-DEF_123@postgres:5432/mlflow", "s3-secret-key",
                                        "admin-pass", "csrf-key", "server"]

    (tmp_path / "postgres_password").write_text("needs%escaping\n")
    done = subprocess.run(["sh", str(script), "true"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "only letters, digits" in done.stderr
    env["POSTGRES_PASSWORD_FILE"] = str(tmp_path / "missing")
    done = subprocess.run(["sh", str(script), "true"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "missing or empty" in done.stderr


def test_the_mlflow_server_asks_every_client_for_credentials():
    """MLflow's basic-auth app, installed in the image, with its first admin's password and its CSRF
    key from secret files (never in the image, the ini file or the environment), and its user
    database on a volume."""
    import configparser
    from importlib.metadata import entry_points

    from mlflow.environment_variables import MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_AUTH_CONFIG_PATH

    mlflow = compose_services()["mlflow"]
    command = mlflow["command"]
    assert option_value(command, "--app-name") == "basic-auth", "mlflow server must run --app-name basic-auth"
    assert "basic-auth" in {entry.name for entry in entry_points(group="mlflow.app")}, "MLflow lost its basic-auth app"
    pip = " ".join(args for keyword, args in dockerfile_instructions(MLFLOW_DOCKERFILE) if keyword == "RUN")
    assert re.search(r"mlflow\[auth\]==", pip), "the image installs mlflow[auth] (the basic-auth app's dependencies)"

    environment = mlflow["environment"]
    ini = PurePosixPath(environment[MLFLOW_AUTH_CONFIG_PATH.name])
    copied = [arguments.split() for keyword, arguments in dockerfile_instructions(MLFLOW_DOCKERFILE) if keyword == "COPY"]
    sources = [tokens[-2] for tokens in copied if PurePosixPath(tokens[-1]) == ini]
    assert sources, f"the image must hold {ini}"
    config = configparser.ConfigParser()
    config.read(COMPOSE.parent / sources[0])
    assert "admin_password" not in config["mlflow"], "the admin password is a secret file, not in the ini"
    database = config["mlflow"]["database_uri"]
    volumes = [volume.split(":")[1] for volume in mlflow.get("volumes", [])]
    assert any(database.startswith(f"sqlite:///{target}/") for target in volumes), (
        f"the auth database {database} must be on a volume (users would be lost with the container)")
    for variable in (MLFLOW_AUTH_ADMIN_PASSWORD.name, "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert variable not in environment and f"{variable}_FILE" in environment, (
            f"{variable} comes from a secret file, read by the entrypoint")
        assert f"export {variable}" in (DEPLOY / "mlflow" / "mlflow-entrypoint.sh").read_text()


def test_mlflow_has_its_own_minio_user_limited_to_the_artifact_bucket():
    services = compose_services()
    mlflow, minio, init = services["mlflow"], services["minio"], services["minio-init"]
    root = {PurePosixPath(minio["environment"][key]).name for key in ("MINIO_ROOT_USER_FILE", "MINIO_ROOT_PASSWORD_FILE")}
    assert not root & set(mlflow.get("secrets", [])), "the MLflow server must not see MinIO's root credentials"
    assert "MINIO_ROOT" not in json.dumps(mlflow["environment"])
    access = re.fullmatch(r"\$\{(\w+)(:?[?-][^}]*)?\}", str(mlflow["environment"]["AWS_ACCESS_KEY_ID"])).group(1)
    assert "ROOT" not in access
    secret_key = PurePosixPath(mlflow["environment"]["MLFLOW_S3_SECRET_KEY_FILE"]).name
    assert secret_key in mlflow["secrets"] and secret_key not in root
    assert "AWS_SECRET_ACCESS_KEY" in (DEPLOY / "mlflow" / "mlflow-entrypoint.sh").read_text()
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"

    # minio-init creates that user, with that key, and gives it the bucket policy.
    script = shell_text(init["command"])
    assert root | {secret_key} <= set(init["secrets"])
    user_variable = re.search(r'mc admin user add \S+ "\$\$(\w+)" < /run/secrets/(\w+)', script)
    assert user_variable and user_variable.group(2) == secret_key, "MLflow's user must get MLflow's secret key"
    assert re.fullmatch(rf"\$\{{{access}(:?[?-][^}}]*)?\}}", str(init["environment"][user_variable.group(1)])), (
        "minio-init must create the user whose access key MLflow uses")
    attach = re.search(r'mc admin policy attach \S+ (\S+) --user "\$\$(\w+)"', script)
    create = re.search(r"mc admin policy create \S+ (\S+) (\S+)", script)
    assert attach and create and attach.group(2) == user_variable.group(1) and attach.group(1) == create.group(1)
    mounts = {PurePosixPath(target): source for source, target, *_ in (volume.split(":") for volume in init["volumes"])}
    policy = json.loads((COMPOSE.parent / mounts[PurePosixPath(create.group(2))]).read_text())

    bucket = option_value(mlflow["command"], "--artifacts-destination").removeprefix("s3://").split("/")[0]
    assert re.search(rf"mc mb --ignore-existing local/{re.escape(bucket)}\s*$", script, re.MULTILINE)
    resources, actions = set(), set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources |= set([statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"])
        actions |= set([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, f"the policy must cover {bucket} only"
    assert all(action.startswith("s3:") and "*" not in action for action in actions), sorted(actions)
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions, "MLflow reads, writes and lists artifacts"


# ---------------------------------------------------------------- build contexts and image pins


def test_build_contexts_leave_out_secrets_and_local_state():
    patterns = dockerignore_patterns(ROOT / ".dockerignore")
    assert {".venv", ".env", ".git"} <= set(patterns)
    for path in (".venv/bin/python", ".env", "deploy/mlflow/.env", "deploy/mlflow/secrets/postgres_password", ".git/HEAD",
                 "mlruns/0/meta.yaml", "outputs/quickstart/pareto.csv", "orchestrator/__pycache__/cli.cpython-311.pyc",
                 ".pytest_cache/README.md", "mlflow.db"):
        assert dockerignored(path, patterns), f"the repository's build context must leave out {path}"
    for flavor, dockerfile in DOCKERFILES.items():  # built from the repository root
        for source in copy_sources(dockerfile):
            assert not dockerignored(source, patterns), f"Dockerfile.{flavor} copies {source}, which .dockerignore drops"

    build = compose_services()["mlflow"]["build"]
    context = COMPOSE.parent / build["context"]
    assert context.resolve() == MLFLOW_DOCKERFILE.parent.resolve() and build["dockerfile"] == MLFLOW_DOCKERFILE.name
    patterns = dockerignore_patterns(context / ".dockerignore")
    for path in (".env", "secrets/postgres_password", "secrets/minio_root_password"):
        assert dockerignored(path, patterns), f"the MLflow image's build context must leave out {path}"
    for source in copy_sources(MLFLOW_DOCKERFILE):
        assert not dockerignored(source, patterns) and (context / source).is_file(), source


# Exact releases: 1.2.3 anywhere in the tag, or MinIO's RELEASE timestamps. PostgreSQL numbers its
# releases MAJOR.MINOR since version 10: postgres:17.6 is one release, postgres:17 moves.
EXACT_RELEASE = re.compile(r"(?<![\d.])\d+\.\d+\.\d+(?![\d.])|^RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$")
MAJOR_MINOR_RELEASES = {"postgres": re.compile(r"\d+\.\d+(-[a-z0-9.]+)?")}


def test_every_image_is_pinned():
    references = image_references()
    assert len(references) >= 10
    for where, reference in references:
        name, tag, digest = split_image(reference)
        assert tag != "latest" and (tag or digest), f"{where}: {reference} floats"
        if digest:
            assert DIGEST.fullmatch(digest), f"{where}: {reference}"
            continue
        two_part = MAJOR_MINOR_RELEASES.get(name)
        assert EXACT_RELEASE.search(tag) or (two_part and two_part.fullmatch(tag)), (
            f"{where}: {reference} is not an exact release (a tag like 17, 3.11-slim or latest moves); "
            "use the full version, or pin the digest with deploy/pin-digests.sh")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_pin_digests_pins_every_pulled_image(tmp_path):
    """Runs deploy/pin-digests.sh on a copy of deploy/ against a stand-in `crane` (no registry here):
    every image pulled from a registry gets NAME:TAG@sha256:..., the images built here stay as they
    are, the files still parse, and a second run changes nothing."""
    import hashlib
    import sys

    assert os.stat(PIN_DIGESTS).st_mode & stat.S_IXUSR, "deploy/pin-digests.sh must be executable"
    work = tmp_path / "repo"
    shutil.copytree(DEPLOY, work / "deploy")
    fake = tmp_path / "bin" / "crane"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport hashlib, sys\nassert sys.argv[1] == 'digest'\n"
                    "print('sha256:' + hashlib.sha256(sys.argv[2].encode()).hexdigest())\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PIN_OWN", None)
    subprocess.run(["bash", str(work / "deploy" / PIN_DIGESTS.name)], env=env, check=True, capture_output=True, text=True)

    pinned = "\n".join(path.read_text() for path in sorted((work / "deploy").rglob("*")) if path.is_file())
    for where, reference in image_references():
        name = split_image(reference)[0]
        if name.startswith(("ghcr.io/cmpnas/", "cmpnas/")):
            assert f"{reference}@" not in pinned, f"{where}: images built here are pinned only with PIN_OWN=1"
            continue
        digest = "sha256:" + hashlib.sha256(reference.split("@")[0].encode()).hexdigest()
        assert f"{reference.split('@')[0]}@{digest}" in pinned, f"{where}: {reference} was not pinned"
    for path in (work / "deploy").rglob("*.yaml"):
        assert all(isinstance(doc, dict) for doc in yaml.safe_load_all(path.read_text()) if doc is not None), path

    before = {path: path.read_text() for path in (work / "deploy").rglob("*") if path.is_file()}
    subprocess.run(["bash", str(work / "deploy" / PIN_DIGESTS.name)], env=env, check=True, capture_output=True, text=True)
    assert before == {path: path.read_text() for path in (work / "deploy").rglob("*") if path.is_file()}
