"""Static checks of deploy/: container images, KubeRay manifests, the cluster-launcher YAML and the
MLflow compose stack.

None of these can be run here (no Docker engine, no Kubernetes, no cloud account), so these tests
check what can be checked without them: every file parses, the search configs validate against
the real schema, every command names the real console script and a registered subcommand, the
config path is where the ConfigMap is mounted, the pieces agree with each other and with
pyproject.toml (versions, extras, resources), and nothing is exposed beyond localhost or ClusterIP.
"""

from __future__ import annotations

import json
import re
import shlex
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
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "cuda": DEPLOY / "docker" / "Dockerfile.cuda"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GPU = "nvidia.com/gpu"


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


def faiss_builds(pip_commands: list[str]) -> set[str]:
    """The FAISS distributions these pip commands install, via the extras of pyproject.toml."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    builds = set()
    for command in pip_commands:
        for group in re.findall(r"\.\[([^\]]+)\]", command):
            for extra in (name.strip() for name in group.split(",")):
                assert extra in extras, f"extra {extra!r} is not declared in pyproject.toml"
                builds |= {dep for dep in extras[extra] if dep.startswith("faiss")}
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


# ---------------------------------------------------------------- every file


def test_deploy_has_the_expected_files():
    expected = {
        "docker/Dockerfile.cpu", "docker/Dockerfile.cuda", "kuberay/configmap.yaml", "kuberay/rayjob.yaml",
        "kuberay/raycluster.yaml", "kuberay/pvc.yaml", "ray-cluster/cluster.yaml", "mlflow/docker-compose.yaml",
        "mlflow/.env.example",
    }
    present = {path.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("*") if path.is_file()}
    assert expected <= present, f"missing: {sorted(expected - present)}"
    assert (ROOT / "docs" / "deploy.md").is_file()


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
    from orchestrator.config import RayConfig, validate_config

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
            # Like orchestrator.ray_cluster.check_fits: one node must hold a whole trial.
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
    assert PYPROJECT["project"]["optional-dependencies"][extra] == [faiss]
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
    base = [arg for keyword, arg in instructions if keyword == "FROM"][-1].split()[0]
    base = base.replace("${RAY_VERSION}", args["RAY_VERSION"])
    assert "py311" in base or "3.11" in base, f"{base}: Python 3.11 expected"
    if flavor == "cuda":
        assert base.startswith(("nvidia/cuda:", "rayproject/ray:")) and ("gpu" in base or "cuda" in base), base


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
            assert re.fullmatch(rf"ghcr\.io/cmpnas/cmpnas:{re.escape(version)}-(cpu|cuda)", image), f"{name}/{group}: {image}"
    mlflow = pinned_version("mlflow")
    compose = load_docs(COMPOSE)[0]
    assert str(compose["services"]["mlflow"]["build"]["args"]["MLFLOW_VERSION"]) == mlflow
    assert f"ARG MLFLOW_VERSION={mlflow}" in (DEPLOY / "mlflow" / "Dockerfile").read_text()


# ---------------------------------------------------------------- cluster shape


def test_rayjob_and_raycluster_have_the_same_groups():
    job, cluster = cluster_specs()["RayJob"], cluster_specs()["RayCluster"]
    assert job["headGroupSpec"] == cluster["headGroupSpec"]
    assert job["workerGroupSpecs"] == cluster["workerGroupSpecs"]
    assert one("RayJob")["spec"]["shutdownAfterJobFinishes"] is True


def test_gpu_worker_group_requests_gpus_and_the_head_none():
    for name, spec in cluster_specs().items():
        gpu_groups = [group for group in spec["workerGroupSpecs"]
                      if int(group["template"]["spec"]["containers"][0]["resources"].get("limits", {}).get(GPU, 0)) >= 1]
        assert gpu_groups, f"{name}: no worker group limits {GPU}"
        for group in gpu_groups:
            assert group["template"]["spec"]["containers"][0]["image"].endswith("-cuda"), group["groupName"]
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        assert GPU not in head.get("limits", {}), f"{name}: the head needs no GPU"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{name}: no trials on the head"


def test_every_pod_runs_non_root():
    for name, spec in cluster_specs().items():
        for group, pod in group_pods(spec).items():
            context = pod.get("securityContext", {})
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) != 0, f"{name}/{group}"


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


def test_mlflow_credentials_come_from_a_secret():
    for name, spec in cluster_specs().items():
        env = {item["name"]: item for item in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert variable in env, f"{name}: the driver (head) lacks {variable}"
            assert "value" not in env[variable] and env[variable]["valueFrom"]["secretKeyRef"]["name"], variable
    assert not [doc for doc in kube_docs() if doc.get("kind") == "Secret"], "no Secret is committed"


# ---------------------------------------------------------------- exposure and secrets


def test_nothing_is_exposed_beyond_cluster_ip():
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


def test_compose_takes_secrets_from_the_environment():
    compose = load_docs(COMPOSE)[0]
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (DEPLOY / "mlflow" / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert used <= example, f".env.example lacks {sorted(used - example)}"
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:?[?-][^}]*)?\}", str(value)), f"{name}.{key} is a literal"
    command = compose["services"]["mlflow"]["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    backend = option_value(command, "--backend-store-uri")
    assert backend.startswith("postgresql://") and "${POSTGRES_PASSWORD" in backend
    bucket = option_value(command, "--artifacts-destination").removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in "\n".join(compose["services"]["create-bucket"]["command"])
    assert ".env" in (DEPLOY / "mlflow" / ".gitignore").read_text().split()
