"""deploy/k8s renders to valid Kubernetes objects that agree with the code, without a cluster.

Each overlay is rendered by the small kustomize below: the fields deploy/k8s uses
(resources, namespace, labels, images, replicas, JSON 6902 patches, generators without
name hashes); it refuses any other field rather than ignore it. Where kubectl is
installed, its own kustomize must render the same objects. Every rendered object is
validated against the Kubernetes OpenAPI schemas bundled by `kubernetes-validate`, in
their strict form (an unknown or misspelt field is an error), for the oldest Kubernetes
these manifests need (1.27: native gRPC probes) and the newest one bundled.

Then, as test_compose.py does for compose: settings against posttrain.config, ports
against SERVICE_PORTS, probes, selectors and references, resources and GPUs, pod
security, images, backing-service addresses, GPUs against the job sizes workers take, the
model repository Triton and the gateway share, and that no secret value is in the repo.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import test_compose as compose_checks  # same folder: its compose view and settings helpers
import yaml
from kubernetes_validate import utils as k8s_schemas
from pydantic import BaseModel
from referencing import Registry, Resource
from sqlalchemy.engine import make_url

from posttrain import config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
OVERLAYS = ("dev", "prod")
SECRET_NAME = "posttrain-secrets"

API_SERVICES = sorted(config.SERVICE_PORTS)
# Workload -> the posttrain service whose settings, port and database it runs with.
POSTTRAIN_WORKLOADS = {name: name for name in API_SERVICES} | {"trainer-worker": "trainer"}
COMMANDS = {name: ["python", "-m", f"services.{name}"] for name in API_SERVICES} | {
    # The trainer's API without a training worker in it, and the workers on their own.
    "trainer": ["python", "-m", "services.trainer", "api"],
    "trainer-worker": ["python", "-m", "services.trainer", "worker"],
}
GPU_WORKLOADS = {"trainer-worker", "triton"}
SLOW_STARTING = {"evaluator", "triton"}
LOOPBACK = re.compile(r"\b127\.\d+\.\d+\.\d+\b|\blocalhost\b|\[::1\]")
# Oldest supported (native gRPC probes went GA in 1.27) and newest bundled.
K8S_VERSIONS = ("1.27", k8s_schemas.latest_version().rsplit(".", 1)[0])

SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY(_ID)?$")


# ------------------------------------------------------------------ a small kustomize

KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas",
    "patches", "generatorOptions", "secretGenerator", "configMapGenerator",
}  # fmt: skip
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
    "CustomResourceDefinition", "PriorityClass", "IngressClass",
}  # fmt: skip
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a manifest, rejecting duplicate keys (kubectl does too)."""
    docs = yaml.load_all(path.read_text(), Loader=compose_checks._StrictLoader)
    return [doc for doc in docs if doc is not None]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize reads them; blank and # lines are skipped."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} has no '=' (values from the environment aren't used)"
        found[key] = value
    return found


def stand_in_secret(key: str) -> str:
    """The stand-in for a secret value, as test_compose sets its required variables."""
    return f"test-{key.lower().replace('_', '-')}"


def env_file_values(path: Path) -> dict[str, str]:
    """A git-ignored env file holds real secrets and exists only where someone filled it
    in; it is rendered from the committed <file>.example, with a test value for each key."""
    example = path.with_name(path.name + ".example")
    if example.exists():
        return {key: stand_in_secret(key) for key in read_env_file(example)}
    return read_env_file(path)


def _generate(kind: str, spec: dict[str, Any], base: Path, options: dict) -> dict[str, Any]:
    if not (spec.get("options") or options).get("disableNameSuffixHash"):
        raise NotImplementedError(f"{spec['name']}: name hashes (and their references)")
    data: dict[str, str] = {}
    for item in spec.get("files", []):
        key, _, file = item.rpartition("=")
        data[key or Path(file).name] = (base / file).read_text()
    for env_file in spec.get("envs", []):
        data.update(env_file_values(base / env_file))
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"JSON pointer {path!r}"
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> None:
    parent, last = _walk(doc, tokens[:-1]), tokens[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        parent[last] = value


def _remove(doc: Any, tokens: list[str]) -> Any:
    parent, last = _walk(doc, tokens[:-1]), tokens[-1]
    return parent.pop(int(last) if isinstance(parent, list) else last)


def apply_json6902(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 on doc, in place; a failed `test` or a missing path raises."""
    for op in operations:
        tokens, kind = _pointer(op["path"]), op["op"]
        if kind == "test":
            actual = _walk(doc, tokens)
            assert actual == op["value"], f"test {op['path']}: {actual!r} != {op['value']!r}"
        elif kind == "add":
            _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            _walk(doc, tokens)  # must exist
            _remove(doc, tokens)
            _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op["from"])
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_walk(doc, source))
            _add(doc, tokens, value)
        else:
            raise ValueError(f"unknown JSON patch op {kind!r}")


def _targets(objects: list[dict[str, Any]], target: dict[str, str]) -> list[dict[str, Any]]:
    unsupported = set(target) - {"kind", "name", "group", "version"}
    if unsupported:
        raise NotImplementedError(f"patch target fields {unsupported}")
    found = []
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        if (
            re.fullmatch(target.get("kind", ".*"), obj["kind"])
            and re.fullmatch(target.get("name", ".*"), obj["metadata"]["name"])
            and target.get("group", group) == group
            and target.get("version", version) == version
        ):
            found.append(obj)
    return found


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return None


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c for key in ("initContainers", "containers", "ephemeralContainers")
        for c in pod_spec.get(key, [])
    ]  # fmt: skip


def _set_image(container: dict[str, Any], rule: dict[str, str]) -> None:
    image = container["image"]
    name, digest = image.split("@", 1) if "@" in image else (image, None)
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != rule["name"]:
        return
    name = rule.get("newName", name)
    if "digest" in rule:
        container["image"] = f"{name}@{rule['digest']}"
    elif "newTag" in rule:
        container["image"] = f"{name}:{rule['newTag']}"
    else:
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Renders a kustomization directory, in kustomize's order: resources and generators,
    then patches, namespace, labels, replicas, images."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields {unknown}")

    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += kustomize(path) if path.is_dir() else load_documents(path)
    options = kustomization.get("generatorOptions", {})
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in kustomization.get(key, []):
            objects.append(_generate(kind, spec, directory, options))

    for patch in kustomization.get("patches", []):
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise NotImplementedError("strategic merge patches (use JSON 6902)")
        targets = _targets(objects, patch["target"])
        assert targets, f"{directory}: patch target {patch['target']} matches nothing"
        for obj in targets:
            apply_json6902(obj, operations)

    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = namespace
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace

    for rule in kustomization.get("labels", []):
        if rule.get("includeSelectors"):
            raise NotImplementedError("labels.includeSelectors (selectors are immutable)")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(rule["pairs"])
            if rule.get("includeTemplates") and (template := pod_template(obj)):
                template.setdefault("metadata", {}).setdefault("labels", {}).update(rule["pairs"])
                for claim in obj["spec"].get("volumeClaimTemplates", []):
                    claim["metadata"].setdefault("labels", {}).update(rule["pairs"])

    for rule in kustomization.get("replicas", []):
        scaled = [
            obj for obj in objects
            if obj["metadata"]["name"] == rule["name"]
            and obj["kind"] in ("Deployment", "StatefulSet", "ReplicaSet")
        ]  # fmt: skip
        assert scaled, f"{directory}: replicas for unknown {rule['name']}"
        for obj in scaled:
            obj["spec"]["replicas"] = rule["count"]

    for rule in kustomization.get("images", []):
        for obj in objects:
            if template := pod_template(obj):
                for container in containers(template["spec"]):
                    _set_image(container, rule)

    ids = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert len(ids) == len(set(ids)), f"{directory}: duplicate objects"
    return objects


@cache
def _rendered(overlay: str) -> str:
    return json.dumps(kustomize(K8S / "overlays" / overlay))


def render(overlay: str) -> list[dict[str, Any]]:
    """A fresh copy of the overlay's objects, so a test can't change another's."""
    return json.loads(_rendered(overlay))


# ------------------------------------------------------------------ views of a render


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def of_kind(objects: list[dict[str, Any]], *kinds: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] in kinds}


def workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if pod_template(o)}


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_template(workload)["spec"]["containers"]
    return container


def all_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, workload in workloads(objects).items():
        for container in containers(pod_template(workload)["spec"]):
            yield name, container


def secret_values(overlay: str) -> dict[str, str]:
    """posttrain-secrets as the pods would see it: generated in dev; in prod made outside
    the repo, with the keys of secret.example.yaml."""
    secret = find(render(overlay), "Secret", SECRET_NAME)
    if secret is not None:
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    example = load_documents(SECRET_EXAMPLE)[0]
    return {key: stand_in_secret(key) for key in example["stringData"]}


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with: envFrom in order, then env."""
    objects, secrets, env = render(overlay), secret_values(overlay), {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{container['name']}: envFrom {source}"
        config_map = find(objects, "ConfigMap", source["configMapRef"]["name"])
        assert config_map, f"{container['name']}: no ConfigMap {source['configMapRef']['name']}"
        env.update(config_map["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif ref := item["valueFrom"].get("configMapKeyRef"):
            config_map = find(objects, "ConfigMap", ref["name"])
            assert config_map and ref["key"] in config_map["data"], f"{item['name']}: {ref}"
            env[item["name"]] = config_map["data"][ref["key"]]
        elif ref := item["valueFrom"].get("fieldRef"):  # the Downward API: a stand-in value
            env[item["name"]] = {"status.podIP": "10.1.2.3"}[ref["fieldPath"]]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET_NAME, f"{item['name']}: secret {ref['name']}"
            assert ref["key"] in secrets, f"{item['name']}: {SECRET_NAME} has no {ref['key']}"
            env[item["name"]] = secrets[ref["key"]]
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = pod_template(workload)["metadata"].get("labels", {})
    return bool(selector) and selector.items() <= labels.items()


def selected(objects: list[dict[str, Any]], selector: dict[str, str]) -> list[str]:
    return [name for name, w in workloads(objects).items() if selects(selector, w)]


def min_replicas(objects: list[dict[str, Any]], deployment: str) -> int:
    for hpa in of_kind(objects, "HorizontalPodAutoscaler").values():
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment:
            return hpa["spec"].get("minReplicas", 1)
    return find(objects, "Deployment", deployment)["spec"].get("replicas", 1)


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert m and m[2] in units, f"bad quantity {value!r}"
    return float(m[1]) * units[m[2]]


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    """The container port a named or numbered port refers to, if the container has it."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int | None:
    for handler in ("grpc", "httpGet", "tcpSocket"):
        if handler in probe:
            return container_port(container, probe[handler]["port"])
    return None


# ------------------------------------------------------------------ rendering and schemas


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_as_kubectl_kustomize_does(overlay, tmp_path):
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    for example in tree.rglob("*.env.example"):
        values = env_file_values(example.with_suffix(""))
        example.with_suffix("").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = subprocess.run(
        ["kubectl", "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(result.stdout)}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
    assert set(ours) == set(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], f"{key} differs from kubectl kustomize's"


def _schema_file(version: str, name: str) -> Any:
    # The strict variant: every object schema forbids properties it doesn't define.
    path = f"kubernetes-json-schema/v{version}.0-local-strict/{name}"
    return k8s_schemas.schema_contents(path, version)


@cache
def _schema_validator(version: str, kind: str, api_version: str) -> jsonschema.Validator:
    """kubernetes_validate.validate() without re-reading the 1 MB of shared definitions
    for every object: the same schema files, references and draft."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1
    definitions = Resource.from_contents(_schema_file(version, "_definitions.json"))
    schema = _schema_file(version, f"{kind.lower()}-{group_version}.json")
    registry = Resource.from_contents(schema) @ (definitions @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    validator = _schema_validator(version, obj["kind"], obj["apiVersion"])
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    return [
        f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def test_schemas_are_bundled_for_the_versions_checked():
    assert {f"{v}.0" for v in K8S_VERSIONS} <= set(k8s_schemas.all_versions())


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(overlay, version):
    errors = [error for obj in render(overlay) for error in schema_errors(obj, version)]
    assert not errors, f"{overlay}, Kubernetes {version}:\n" + "\n".join(errors)


def test_base_and_secret_template_are_valid_kubernetes():
    objects = [*kustomize(K8S / "base"), *load_documents(SECRET_EXAMPLE)]
    errors = [error for obj in objects for error in schema_errors(obj, K8S_VERSIONS[-1])]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_labelled_and_in_the_overlay_namespace(overlay):
    objects = render(overlay)
    (namespace,) = of_kind(objects, "Namespace")
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "posttrain"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
    for name, workload in workloads(objects).items():
        assert pod_template(workload)["metadata"]["labels"]["app.kubernetes.io/part-of"], name


# ------------------------------------------------------------------ workloads and services


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_is_a_deployment_running_its_module(overlay):
    deployments = of_kind(render(overlay), "Deployment")
    assert set(POSTTRAIN_WORKLOADS) | {"triton"} <= set(deployments)
    for name, command in COMMANDS.items():
        assert main_container(deployments[name])["command"] == command, name


def test_trainer_modes_the_manifests_run_exist():
    usage = importlib.import_module("services.trainer.__main__").USAGE
    modes = set(re.search(r"\[([a-z|]+)\]", usage)[1].split("|"))
    for name in ("trainer", "trainer-worker"):
        assert COMMANDS[name][-1] in modes, f"{name}: services.trainer has modes {modes}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_ports_are_the_code_s_service_ports(overlay):
    objects = render(overlay)
    services = of_kind(objects, "Service")
    assert "trainer-worker" not in services, "API calls must not reach the training workers"
    for name in API_SERVICES:
        expected = config.SERVICE_PORTS[name]
        (port,) = services[name]["spec"]["ports"]
        assert port["port"] == expected, f"Service {name}: port {port['port']}, not {expected}"
        assert selected(objects, services[name]["spec"]["selector"]) == [name]
        container = main_container(find(objects, "Deployment", name))
        assert container_port(container, port["targetPort"]) == expected, f"Service {name}"
        env = container_env(overlay, container)
        assert int(env["POSTTRAIN_GRPC_PORT"]) == expected, f"{name}: POSTTRAIN_GRPC_PORT"
        assert container_port(container, "grpc") == expected, f"{name}: containerPort"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_grpc_health_service_on_the_service_port(overlay):
    objects = render(overlay)
    # A training worker serves no gRPC (services/trainer/__main__.py): a probe would fail.
    worker = main_container(find(objects, "Deployment", "trainer-worker"))
    assert not {"ports", "startupProbe", "readinessProbe", "livenessProbe"} & set(worker)
    for name in API_SERVICES:
        container = main_container(find(objects, "Deployment", name))
        probes = {k: container.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert probes["readinessProbe"] and probes["livenessProbe"], name
        assert bool(probes["startupProbe"]) == (name in SLOW_STARTING), (
            f"{name}: a startupProbe for the slow-starting ML services {SLOW_STARTING}, only"
        )
        for kind, probe in probes.items():
            if probe:
                assert probe.get("grpc", {}).get("port") == config.SERVICE_PORTS[name], (
                    f"{name}: {kind} must be a gRPC probe on port {config.SERVICE_PORTS[name]}"
                )
                # The default (1 s) is short for a Python server that is busy.
                assert probe.get("timeoutSeconds", 1) >= 3, f"{name}: {kind} timeout"
        liveness = probes["livenessProbe"]
        patience = liveness.get("initialDelaySeconds", 0) if not probes["startupProbe"] else 0
        patience += liveness["periodSeconds"] * liveness["failureThreshold"]
        assert patience >= 120, f"{name}: liveness kills a slow start after {patience}s"
    for name, workload in workloads(objects).items():
        if name in ("minio-init", "trainer-worker"):
            continue
        container = main_container(workload)
        for kind in ("readinessProbe", "livenessProbe"):
            assert container.get(kind), f"{name}: no {kind}"
            assert probe_port(container, container[kind]) or "exec" in container[kind], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_pod_labels_and_select_one_workload(overlay):
    objects = render(overlay)
    for name, workload in workloads(objects).items():
        if workload["kind"] in ("Deployment", "StatefulSet"):
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selects(selector, workload), f"{name}: selector doesn't match its pods"
            others = [n for n in selected(objects, selector) if n != name]
            assert not others, f"{name}'s selector also matches the pods of {others}"
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in of_kind(objects, kind).items():
            if obj["spec"].get("type") == "ExternalName":
                continue
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert len(selected(objects, selector)) == 1, f"{kind} {name} selects {selector}"
    for name, sts in of_kind(objects, "StatefulSet").items():
        service = find(objects, "Service", sts["spec"]["serviceName"])
        assert service and service["spec"].get("clusterIP") == "None", f"{name}: governing Service"
        assert selected(objects, service["spec"]["selector"]) == [name]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_name_existing_config_maps_and_the_secret(overlay):
    objects = render(overlay)
    for name, workload in workloads(objects).items():
        for container in containers(pod_template(workload)["spec"]):
            container_env(overlay, container)  # resolves every reference or fails
        for volume in pod_template(workload)["spec"].get("volumes", []):
            if "configMap" in volume:
                config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
                assert config_map, f"{name}: volume {volume['name']}"
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in config_map["data"], f"{name}: {item['key']}"
            assert set(volume) - {"name"} <= {"configMap", "emptyDir", "persistentVolumeClaim"}


# ------------------------------------------------------------------ resources, GPUs, budgets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay):
    for name, container in all_containers(render(overlay)):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for resource in ("cpu", "memory"):
            assert resource in requests and resource in limits, f"{name}: no {resource} limits"
            assert quantity(requests[resource]) <= quantity(limits[resource]), (
                f"{name}: {resource} request above its limit"
            )
        for resource in set(requests) | set(limits):
            if "/" in resource:  # extended resources (GPUs) can't be overcommitted
                assert requests.get(resource) == limits.get(resource), (
                    f"{name}: {resource} request must equal its limit"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_only_in_prod_and_only_for_training_and_inference(overlay):
    objects = render(overlay)
    if overlay == "dev":
        assert "nvidia.com/gpu" not in json.dumps(objects), "a GPU request or toleration in dev"
        return
    for name, workload in workloads(objects).items():
        spec = pod_template(workload)["spec"]
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu", 0) for c in containers(spec)]
        tolerated = {t["key"] for t in spec.get("tolerations", [])}
        if name in GPU_WORKLOADS:
            assert sum(gpus) >= 1, f"{name}: no nvidia.com/gpu"
            assert "nvidia.com/gpu" in tolerated, f"{name}: doesn't tolerate GPU nodes"
        else:
            assert not any(gpus) and "nvidia.com/gpu" not in tolerated, f"{name}: a GPU"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_services_have_budgets_that_still_allow_a_drain(overlay):
    objects = render(overlay)
    budgets = of_kind(objects, "PodDisruptionBudget")
    covered = {}
    for name, pdb in budgets.items():
        (target,) = selected(objects, pdb["spec"]["selector"]["matchLabels"])
        covered[target] = pdb
        replicas = min_replicas(objects, target)
        if "minAvailable" in pdb["spec"]:
            assert replicas > pdb["spec"]["minAvailable"], (
                f"{name}: minAvailable {pdb['spec']['minAvailable']} of {replicas} replicas "
                "blocks every node drain"
            )
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1, name
    assert set(covered) == set(API_SERVICES), "one budget per API service"


def test_prod_runs_api_services_redundantly_and_autoscales_the_gateway():
    objects = render("prod")
    for name in [*API_SERVICES, "trainer-worker"]:
        assert min_replicas(objects, name) >= 2, f"{name}: one replica in production"
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway",
    }  # fmt: skip
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert "replicas" not in find(objects, "Deployment", "gateway")["spec"], (
        "a replica count beside an HPA resets the autoscaled count on every apply"
    )
    assert main_container(find(objects, "Deployment", "gateway"))["resources"]["requests"]["cpu"]
    # Explicit model control is per server: a second Triton would serve other models.
    assert find(objects, "Deployment", "triton")["spec"]["replicas"] == 1


def test_dev_fits_a_developer_machine():
    cpu = memory = 0.0
    for workload in workloads(render("dev")).values():
        replicas = workload["spec"].get("replicas", 1)
        for container in containers(pod_template(workload)["spec"]):
            cpu += replicas * quantity(container["resources"]["requests"]["cpu"])
            memory += replicas * quantity(container["resources"]["requests"]["memory"])
    assert cpu <= 4 and memory <= 12 * 2**30, f"dev requests {cpu} CPUs, {memory / 2**30} GiB"


# ------------------------------------------------------------------ pod security


def _pod_security_violations(spec: dict[str, Any]) -> list[str]:
    """Kubernetes' "restricted" Pod Security Standard, as far as these manifests go."""
    problems = []
    pod = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(key)
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"hostPath volume {volume['name']}")
    if pod.get("sysctls"):
        problems.append("sysctls")
    for c in containers(spec):
        ctx = {**pod, **c.get("securityContext", {})}
        if ctx.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation must be false")
        caps = c.get("securityContext", {}).get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{c['name']}: capabilities must drop ALL")
        if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser") == 0:
            problems.append(f"{c['name']}: may run as root")
        if ctx.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: no seccomp profile")
        if any("hostPort" in p for p in c.get("ports", [])):
            problems.append(f"{c['name']}: hostPort")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(overlay):
    objects = render(overlay)
    (namespace,) = of_kind(objects, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, workload in workloads(objects).items():
        spec = pod_template(workload)["spec"]
        assert not _pod_security_violations(spec), f"{name}: {_pod_security_violations(spec)}"
        assert spec.get("automountServiceAccountToken") is False, f"{name}: needs no API token"
        # Service links would add *_PORT variables for every Service (KAFKA_PORT breaks Kafka).
        assert spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks"
        # A user name can't be checked against runAsNonRoot: the kubelet needs the number.
        assert isinstance(spec["securityContext"].get("runAsUser"), int), f"{name}: runAsUser"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_posttrain_pods_run_read_only_as_the_image_user_with_writable_state(overlay):
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+)", dockerfile, re.M)[-1])
    objects = render(overlay)
    for name in [*POSTTRAIN_WORKLOADS, "triton"]:
        spec = pod_template(find(objects, "Deployment", name))["spec"]
        container = main_container(find(objects, "Deployment", name))
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, f"{name}: rw /"
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") in empty_dirs, f"{name}: /tmp is not writable"
        if name in POSTTRAIN_WORKLOADS:
            assert spec["securityContext"]["runAsUser"] == uid, f"{name}: not the image's user"
            state_dir = container_env(overlay, container)["POSTTRAIN_STATE_DIR"]
            assert mounts.get(state_dir) in empty_dirs, f"{name}: {state_dir} is not writable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_pre_stop_and_grpc_drain(overlay, monkeypatch):
    objects = render(overlay)
    for name, service in POSTTRAIN_WORKLOADS.items():
        deployment = find(objects, "Deployment", name)
        container = main_container(deployment)
        settings = settings_for(overlay, service, container, monkeypatch)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop["command"][1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
        if name in config.SERVICE_PORTS:
            assert sleep > 0, f"{name}: no preStop pause for endpoint removal"
        grace = pod_template(deployment)["spec"]["terminationGracePeriodSeconds"]
        assert grace > sleep + settings.grpc.grace_seconds, (
            f"{name}: SIGKILL after {grace}s, before preStop ({sleep}s) and the gRPC drain "
            f"(POSTTRAIN_GRPC_GRACE_SECONDS={settings.grpc.grace_seconds}) are over"
        )


# ------------------------------------------------------------------ images


def test_images_are_pinned_and_match_compose_and_the_release():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    compose = compose_checks.services()
    for overlay in OVERLAYS:
        objects = render(overlay)
        for name, container in all_containers(objects):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert ("@sha256:" in image or tag) and tag != "latest", f"{overlay}/{name}: {image}"
        triton = main_container(find(objects, "Deployment", "triton"))["image"]
        assert triton == compose["triton"]["image"], "Triton differs from docker-compose.yml's"
        posttrain_images = {
            main_container(find(objects, "Deployment", n))["image"] for n in POSTTRAIN_WORKLOADS
        }
        assert len(posttrain_images) == 1, posttrain_images
        (image,) = posttrain_images
        if overlay == "dev":
            assert image == compose["intake"]["image"], "dev runs the image compose builds"
            for infra in ("kafka", "minio", "postgres"):
                ours = main_container(find(objects, "StatefulSet", infra))["image"]
                assert ours == compose[infra]["image"], f"{infra} differs from docker-compose.yml's"
        else:
            # The GPU workers need a CUDA build of torch (deploy/Dockerfile's TORCH_VARIANT).
            assert re.fullmatch(rf".+/posttrain:{re.escape(version)}-cu\d+", image), image
    for name, container in all_containers(kustomize(K8S / "base")):
        if name in POSTTRAIN_WORKLOADS:
            assert container["image"] == "posttrain", "base leaves the tag to the overlays"


# ------------------------------------------------------------------ settings


def settings_class(service: str) -> type[config.ServiceSettings]:
    module = __import__(f"services.{service}.settings", fromlist=["*"])
    own = [
        cls for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, config.ServiceSettings)
        and cls.__module__ == module.__name__
    ]  # fmt: skip
    assert len(own) == 1, f"services/{service}/settings.py: {own}"
    return own[0]


def string_settings(settings: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted field name, value) of every string setting, nested settings included."""
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if isinstance(value, BaseModel):
            yield from string_settings(value, f"{prefix}{field}.")
        elif isinstance(value, str):
            yield f"{prefix}{field}", value


def settings_for(
    overlay: str, service: str, container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> config.ServiceSettings:
    """The settings object the service would build inside the container."""
    import os

    for key in list(os.environ):
        if key.startswith("POSTTRAIN_") or key == "PGPASSWORD":
            monkeypatch.delenv(key)
    for key, value in container_env(overlay, container).items():
        monkeypatch.setenv(key, value)
    return settings_class(service)()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_posttrain_variable_is_a_real_setting(overlay):
    valid = compose_checks.valid_posttrain_variables()
    objects = render(overlay)
    for name, config_map in of_kind(objects, "ConfigMap").items():
        if name.startswith("posttrain-"):
            unknown = set(config_map["data"]) - valid
            assert not unknown, f"ConfigMap {name}: {unknown} read by no settings class"
    for name, container in all_containers(objects):
        env = container_env(overlay, container)
        for key in env:
            if key.startswith("POSTTRAIN_"):
                assert key in valid, f"{name}: {key} is read by no settings class"
        if name in POSTTRAIN_WORKLOADS:
            others = {k for k in env if not k.startswith("POSTTRAIN_")}
            assert others == {"PGPASSWORD"}, f"{name}: unexpected variables {others}"


@pytest.mark.parametrize("name", sorted(POSTTRAIN_WORKLOADS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_settings_load_from_the_rendered_environment(overlay, name, monkeypatch):
    service = POSTTRAIN_WORKLOADS[name]
    container = main_container(find(render(overlay), "Deployment", name))
    settings = settings_for(overlay, service, container, monkeypatch)
    assert settings.service_name == service
    assert settings.grpc_port() == config.SERVICE_PORTS[service]
    assert settings.grpc.host == "0.0.0.0", "the kubelet and Services reach the pod by its IP"
    assert not settings.grpc.tls_cert_file, "the kubelet's gRPC probes speak plaintext only"
    assert settings.state_dir.startswith("/")
    assert settings.s3.access_key and settings.s3.secret_key
    for url in (settings.database_url(), settings.auth.db_url):
        assert make_url(url).get_backend_name() == "postgresql", url
        assert make_url(url).password is None, f"password in {url}; use PGPASSWORD"
    assert make_url(settings.auth.db_url).database == "auth", "API keys in one database"
    assert container_env(overlay, container)["PGPASSWORD"]
    for field, value in string_settings(settings):
        if field != "grpc.host":
            assert not LOOPBACK.search(value), f"{name}: {field}={value} points into its own pod"
    # Only intake seeds the bootstrap admin key: five services seeding it at once would race.
    assert bool(settings.auth.bootstrap_admin_key) == (name == "intake"), (
        f"{name}: only intake gets POSTTRAIN_BOOTSTRAP_ADMIN_KEY"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_owns_its_database(overlay):
    objects = render(overlay)
    databases = {}
    for name, service in POSTTRAIN_WORKLOADS.items():
        env = container_env(overlay, main_container(find(objects, "Deployment", name)))
        databases.setdefault(make_url(env["POSTTRAIN_DB_URL"]).database, set()).add(service)
    assert all(len(owners) == 1 for owners in databases.values()), databases
    assert len(databases) == len(API_SERVICES)


def test_dev_settings_match_docker_compose():
    objects = render("dev")
    for name, service in POSTTRAIN_WORKLOADS.items():
        ours = container_env("dev", main_container(find(objects, "Deployment", name)))
        theirs = compose_checks.environment(service)
        for key in set(ours) & set(theirs):
            if key.startswith("POSTTRAIN_") and not SECRET_LIKE.search(key):
                assert ours[key] == theirs[key], f"{name}: {key} differs from docker-compose.yml"


# ------------------------------------------------------------------ addresses


# Setting -> image of the pods its address must reach (where they run in the cluster);
# None: a posttrain service, on its own port.
ADDRESS_SETTINGS = {
    "POSTTRAIN_INTAKE_TARGET": None,
    "POSTTRAIN_REGISTRY_TARGET": None,
    "POSTTRAIN_EVALUATOR_TARGET": None,
    "POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS": "apache/kafka:",
    "POSTTRAIN_S3_ENDPOINT": "minio/minio:",
    "POSTTRAIN_TRITON_GRPC_URL": "nvcr.io/nvidia/tritonserver:",
    "POSTTRAIN_TRITON_HTTP_URL": "nvcr.io/nvidia/tritonserver:",
    "POSTTRAIN_DB_URL": "postgres:",
    "POSTTRAIN_AUTH_DB_URL": "postgres:",
}


def _check_address(objects: list[dict[str, Any]], host: str, port: int, image: str | None) -> None:
    service = find(objects, "Service", host)
    assert service, f"no Service {host}"
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert ports, f"Service {host} has no port {port}"
    if service["spec"].get("type") == "ExternalName":
        return  # a DNS alias; the host behind it is outside the cluster
    (target,) = selected(objects, service["spec"]["selector"])
    container = main_container(workloads(objects)[target])
    if image is None:
        assert target in API_SERVICES and port == config.SERVICE_PORTS[target], f"{host}:{port}"
    else:
        assert container["image"].startswith(image), f"{host} reaches {container['image']}"
    assert container_port(container, ports[0].get("targetPort", port)), f"{host}:{port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backing_addresses_reach_services_on_their_ports(overlay):
    objects = render(overlay)
    for name in POSTTRAIN_WORKLOADS:
        env = container_env(overlay, main_container(find(objects, "Deployment", name)))
        for key, value in env.items():
            if re.search(r"_(URL|ENDPOINT|SERVERS|TARGET)$", key):
                assert key in ADDRESS_SETTINGS, f"{name}: {key} is an address this can't check"
                if key.endswith("DB_URL"):
                    url = make_url(value)
                    addresses = [(url.host, url.port or 5432)]
                else:
                    addresses = [item.strip().rsplit(":", 1) for item in value.split(",")]
                for host, port in addresses:
                    _check_address(objects, host, int(port), ADDRESS_SETTINGS[key])
    external = {
        n for n, s in of_kind(objects, "Service").items() if s["spec"].get("type") == "ExternalName"
    }
    assert external == ({"kafka", "minio", "postgres"} if overlay == "prod" else set())


def mounted_claims(workload: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Mount path -> (PersistentVolumeClaim name, read-only) of the main container."""
    volumes = {v["name"]: v for v in pod_template(workload)["spec"]["volumes"]}
    found = {}
    for mount in main_container(workload).get("volumeMounts", []):
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim:
            found[mount["mountPath"]] = (claim["claimName"], bool(mount.get("readOnly")))
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_and_triton_share_one_read_write_many_model_repository(overlay):
    """The gateway writes model folders and installs adapters where Triton reads them: the
    same ReadWriteMany claim at the same path in every gateway pod and the Triton pod (an
    S3 repository would not do: Triton copies S3 models at load time)."""
    objects = render(overlay)
    triton = find(objects, "Deployment", "triton")
    gateway = find(objects, "Deployment", "gateway")
    repository = compose_checks.flag(main_container(triton)["args"], "--model-repository")
    env = container_env(overlay, main_container(gateway))
    assert repository == env["POSTTRAIN_TRITON_MODEL_REPOSITORY"] == "/models"
    claim, read_only = mounted_claims(triton)[repository]
    assert read_only, "Triton only reads the repository"
    assert mounted_claims(gateway)[repository] == (claim, False), "the gateway writes it"
    cache = Path(env["POSTTRAIN_MODEL_CACHE_DIR"])
    assert cache.is_relative_to(repository), "config.pbtxt paths into the cache: Triton reads"
    pvc = find(objects, "PersistentVolumeClaim", claim)
    assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"].get("storageClassName"), f"{overlay}: no storage class for {claim}"
    assert "s3://" not in json.dumps(triton), "an S3 model repository"
    # The other services keep their artifacts in S3, not on the claim.
    users = {n for n, w in workloads(objects).items() if claim in json.dumps(w)}
    assert users == {"gateway", "triton"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_workers_take_jobs_as_large_as_their_gpus(overlay):
    """A job of N processes runs on one worker pod, one process per GPU: a worker takes
    jobs of up to its GPUs (1 without GPUs), and the API refuses larger ones."""
    objects = render(overlay)
    worker = main_container(find(objects, "Deployment", "trainer-worker"))
    gpus = int(worker["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert gpus == int(worker["resources"]["requests"].get("nvidia.com/gpu", 0))
    worker_env = container_env(overlay, worker)
    api_env = container_env(overlay, main_container(find(objects, "Deployment", "trainer")))
    assert int(worker_env["POSTTRAIN_WORKER_MAX_PROCESSES"]) == max(gpus, 1)
    assert int(api_env["POSTTRAIN_MAX_JOB_PROCESSES"]) == max(gpus, 1)
    if overlay == "prod":
        assert gpus >= 2, "production workers can run multi-GPU jobs"
        volumes = {
            v["name"]: v
            for v in pod_template(find(objects, "Deployment", "trainer-worker"))["spec"]["volumes"]
        }
        shm = {m["mountPath"]: volumes[m["name"]] for m in worker["volumeMounts"]}["/dev/shm"]
        assert shm["emptyDir"]["medium"] == "Memory", "NCCL needs a large /dev/shm"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_multi_node_jobs_span_at_most_the_workers_that_share_a_folder(overlay):
    """A job of M nodes runs on M worker pods: each reaches the others at its pod IP and
    stages sharded checkpoints in one ReadWriteMany claim that every worker mounts at the
    path of POSTTRAIN_WORKER_SHARED_DIR; the API allows no more nodes than workers."""
    objects = render(overlay)
    deployment = find(objects, "Deployment", "trainer-worker")
    worker = main_container(deployment)
    env = container_env(overlay, worker)
    by_name = {e["name"]: e for e in worker["env"]}
    assert by_name["POSTTRAIN_WORKER_NODE_ADDRESS"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "status.podIP"
    }
    claim, read_only = mounted_claims(deployment)[env["POSTTRAIN_WORKER_SHARED_DIR"]]
    assert not read_only
    pvc = find(objects, "PersistentVolumeClaim", claim)
    assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"].get("storageClassName"), f"{overlay}: no storage class for {claim}"
    api_env = container_env(overlay, main_container(find(objects, "Deployment", "trainer")))
    max_nodes = int(api_env["POSTTRAIN_MAX_JOB_NODES"])
    assert 1 <= max_nodes <= deployment["spec"].get("replicas", 1)
    if overlay == "prod":
        assert max_nodes >= 2, "production offers multi-node jobs"


def test_triton_serves_under_explicit_model_control():
    for overlay in OVERLAYS:
        objects = render(overlay)
        deployment = find(objects, "Deployment", "triton")
        triton = main_container(deployment)
        env = container_env(overlay, triton)
        args = [expand(arg, env) for arg in triton["args"]]
        assert args[0] == "tritonserver"
        assert compose_checks.flag(args, "--model-control-mode") == "explicit"
        gateway = container_env(overlay, main_container(find(objects, "Deployment", "gateway")))

        service_ports = find(objects, "Service", "triton")["spec"]["ports"]
        for option, default, setting in (
            ("--grpc-port", "8001", "POSTTRAIN_TRITON_GRPC_URL"),
            ("--http-port", "8000", "POSTTRAIN_TRITON_HTTP_URL"),
        ):
            port = int(compose_checks.flag(args, option, default))
            served = [
                p["port"] for p in service_ports if container_port(triton, p["targetPort"]) == port
            ]
            assert [f"triton:{p}" for p in served] == [gateway[setting]], f"{overlay}: {setting}"
            if option == "--http-port":
                assert probe_port(triton, triton["readinessProbe"]) == port
        assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        volumes = {v["name"]: v for v in pod_template(deployment)["spec"]["volumes"]}
        shm = {m["mountPath"]: volumes[m["name"]] for m in triton["volumeMounts"]}["/dev/shm"]
        assert shm["emptyDir"]["medium"] == "Memory", "the Python backend needs a large /dev/shm"


# ------------------------------------------------------------------ dev's backing services


def test_dev_kafka_is_a_working_single_node_kraft_cluster(monkeypatch):
    objects = render("dev")
    kafka = main_container(find(objects, "StatefulSet", "kafka"))
    env = container_env("dev", kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == env["KAFKA_NODE_ID"], "the only voter must be this node"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    assert voter.rsplit(":", 1)[1] == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]].lstrip(":")
    for key, value in env.items():
        if key.endswith(("REPLICATION_FACTOR", "MIN_ISR", "MIN_INSYNC_REPLICAS")):
            assert int(value) == 1, f"{key}={value} on a single-node cluster"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    host, port = advertised["PLAINTEXT"].rsplit(":", 1)
    assert listeners["PLAINTEXT"] == f":{port}"
    _check_address(objects, host, int(port), "apache/kafka:")
    mounts = [m["mountPath"] for m in kafka["volumeMounts"]]
    assert any(env["KAFKA_LOG_DIRS"].startswith(m + "/") for m in mounts), "log dir not on a volume"
    assert env["CLUSTER_ID"] == compose_checks.environment("kafka")["CLUSTER_ID"]
    largest = max(
        settings_for("dev", s, main_container(find(objects, "Deployment", n)), monkeypatch)
        .kafka.max_message_bytes
        for n, s in POSTTRAIN_WORKLOADS.items()
    )  # fmt: skip
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) > largest, "broker rejects the largest event"


def test_dev_postgres_creates_every_database_the_services_use():
    objects = render("dev")
    postgres = main_container(find(objects, "StatefulSet", "postgres"))
    pg = container_env("dev", postgres)
    databases = set(pg["SERVICE_DATABASES"].split()) | {pg["POSTGRES_DB"]}
    for name in POSTTRAIN_WORKLOADS:
        env = container_env("dev", main_container(find(objects, "Deployment", name)))
        assert env["PGPASSWORD"] == pg["POSTGRES_PASSWORD"], name
        for key in ("POSTTRAIN_DB_URL", "POSTTRAIN_AUTH_DB_URL"):
            url = make_url(env[key])
            assert url.username == pg["POSTGRES_USER"], f"{name}: {key}"
            assert url.database in databases, f"{name}: database {url.database} never created"
    mounts = {m["mountPath"]: m["name"] for m in postgres["volumeMounts"]}
    # A directory below the volume's root: initdb refuses a non-empty one (lost+found).
    data = [path for path, volume in mounts.items() if volume == "data"]
    assert data and pg["PGDATA"].startswith(data[0] + "/"), f"PGDATA {pg['PGDATA']}"
    assert "/docker-entrypoint-initdb.d" in mounts, "no database init script"


def test_dev_minio_init_creates_the_services_bucket_and_user():
    objects = render("dev")
    init = container_env("dev", main_container(find(objects, "Job", "minio-init")))
    gateway = container_env("dev", main_container(find(objects, "Deployment", "gateway")))
    assert init["BUCKET"] == gateway["POSTTRAIN_S3_BUCKET"]
    assert init["SERVICE_ACCESS_KEY"] == gateway["POSTTRAIN_S3_ACCESS_KEY"]
    assert init["SERVICE_SECRET_KEY"] == gateway["POSTTRAIN_S3_SECRET_KEY"]
    assert init["SERVICE_ACCESS_KEY"] != init["MINIO_ROOT_USER"], "services get no root account"
    endpoint = urlsplit(init["MINIO_ENDPOINT"])
    _check_address(objects, endpoint.hostname, endpoint.port, "minio/minio:")
    assert endpoint.netloc == gateway["POSTTRAIN_S3_ENDPOINT"]


def test_dev_init_scripts_are_the_compose_ones():
    # kustomize reads no file outside the overlay, so the overlay holds copies.
    for script in ("minio/init.sh", "postgres/init-databases.sh"):
        ours = (K8S / "overlays" / "dev" / script).read_text()
        assert ours == (ROOT / "deploy" / "compose" / script).read_text(), script


# ------------------------------------------------------------------ secrets


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_no_secret_value_is_in_the_repository():
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or "patches" in path.parts:
            continue
        for doc in load_documents(path):
            if doc["kind"] == "Secret":
                assert path == SECRET_EXAMPLE, f"{path}: a Secret in the repository"
                values = {**doc.get("data", {}), **doc.get("stringData", {})}
                assert not any(values.values()), f"{path}: a value in the Secret template"
            if doc["kind"] == "ConfigMap":
                secret_like = [k for k in doc["data"] if SECRET_LIKE.search(k)]
                assert not secret_like, f"{path}: {secret_like} belong in the Secret"
            template = pod_template(doc)
            for container in containers(template["spec"]) if template else []:
                for item in container.get("env", []):
                    if SECRET_LIKE.search(item["name"]):
                        assert "secretKeyRef" in item.get("valueFrom", {}), (
                            f"{path}: {item['name']} must come from a secretKeyRef"
                        )
    for path in _kustomizations():
        kustomization = load_documents(path)[0]
        for generator in kustomization.get("secretGenerator", []):
            assert set(generator) <= {"name", "envs", "options", "type"}, "literals or files"
            for env_file in generator["envs"]:
                real = path.parent / env_file
                ignored = subprocess.run(
                    ["git", "check-ignore", "-q", str(real)], cwd=ROOT, check=False
                )
                assert ignored.returncode == 0, f"{real} is not git-ignored"
                example = real.with_name(real.name + ".example")
                assert not any(read_env_file(example).values()), f"a value in {example}"
        assert SECRET_EXAMPLE.name not in kustomization.get("resources", [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_keys_are_exactly_those_the_pods_use(overlay):
    used = set()
    for _, container in all_containers(render(overlay)):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert not ref.get("optional"), f"{item['name']}: a missing key must fail"
                used.add(ref["key"])
    assert used == set(secret_values(overlay)), "secret template and pods disagree"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_console_reaches_every_service_over_the_cluster_and_holds_no_credentials(
    overlay, monkeypatch
):
    from services.console.settings import ConsoleSettings

    objects = render(overlay)
    deployment = find(objects, "Deployment", "console")
    container = main_container(deployment)
    assert container["command"] == ["python", "-m", "services.console"]
    env = container_env(overlay, container)
    for key in list(os.environ):
        if key.startswith("POSTTRAIN_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ConsoleSettings()
    assert settings.host == "0.0.0.0" and len(settings.secret_key) >= 16
    for name, port in config.SERVICE_PORTS.items():
        assert getattr(settings, f"{name}_target") == f"{name}:{port}"
    # People sign in with their own API keys: no database, S3 or admin credentials here.
    assert set(env) - {k for k in env if k.startswith("POSTTRAIN_CONSOLE_")} == {
        "POSTTRAIN_LOG_LEVEL",
        "POSTTRAIN_LOG_FORMAT",
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": settings.port}
    service = find(objects, "Service", "console")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
