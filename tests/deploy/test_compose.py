"""docker-compose.yml and deploy/Dockerfile agree with the code, checked without Docker.

No Docker engine runs on the development and CI machines, so these tests read the files:
compose's structure, the settings each service gets (against posttrain.config), who
depends on whom, addresses and ports, volumes, secrets, and how the image is built.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib
import importlib.util
import json
import os
import re
import shlex
import tomllib
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from posttrain import config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy" / "compose" / "gpu.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / "env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

POSTTRAIN_SERVICES = sorted(config.SERVICE_PORTS)
INFRA_IMAGES = {
    "kafka": "apache/kafka:",
    "minio": "minio/minio:",
    "postgres": "postgres:16",
    "triton": "nvcr.io/nvidia/tritonserver:",
}

# Keys of the Compose Specification (https://github.com/compose-spec/compose-spec).
TOP_LEVEL_KEYS = {"name", "services", "networks", "volumes", "secrets", "configs", "include"}
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus",
    "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules",
    "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add",
    "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "label_file",
    "links", "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness",
    "memswap_limit", "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid",
    "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged", "profiles",
    "pull_policy", "read_only", "restart", "runtime", "scale", "secrets", "security_opt",
    "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls",
    "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts", "volumes", "volumes_from",
    "working_dir",
}  # fmt: skip
HEALTHCHECK_KEYS = {
    "test", "interval", "timeout", "retries", "start_period", "start_interval", "disable",
}  # fmt: skip


# ------------------------------------------------------------------ interpolation

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def _references(text: str) -> list[tuple[str, str | None, str]]:
    """(variable, operator, argument) for each ${...} in text, as compose reads them."""
    found = []
    for m in _VARIABLE.finditer(text):
        name = m["braced"] or m["plain"]
        if name:
            found.append((name, m["op"], m["arg"] or ""))
    return found


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["plain"]
        op, arg, current = m["op"], m["arg"] or "", env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else current
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"required variable {name} is not set: {arg}")
            return current
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(substitute, value)


class _StrictLoader(yaml.SafeLoader):
    """Rejects duplicate keys, as compose's YAML parser does (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # Before merge keys (<<) are flattened: a key may override a merged one.
        keys = [k.value for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
        duplicates = {k for k in keys if keys.count(k) > 1}
        if duplicates:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate keys {duplicates}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_StrictLoader)


@cache
def raw_compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def _strings(value: Any) -> list[str]:
    """Every string value in a parsed YAML document (comments are gone by then)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def variables_in(path: Path) -> list[tuple[str, str | None, str]]:
    return [ref for text in _strings(load_yaml(path)) for ref in _references(text)]


@cache
def required_variables() -> frozenset[str]:
    return frozenset(name for name, op, _ in variables_in(COMPOSE_FILE) if op in (":?", "?"))


@cache
def compose() -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with only the required
    variables set, each to its own value (so the tests can tell which one ended where)."""
    env = {name: f"test-{name.lower().replace('_', '-')}" for name in required_variables()}
    return interpolate(raw_compose(), env)


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def command_args(service: dict[str, Any], key: str = "command") -> list[str]:
    value = service.get(key) or []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def flag(args: list[str], name: str, default: str | None = None) -> str | None:
    """Value of `--name=value` or `--name value` in an argument list."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return default


def seconds(duration: str) -> float:
    """A compose duration such as 20s, 1m30s or 500ms, in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------ settings in the code


def _settings_classes() -> list[type[config.ServiceSettings]]:
    """ServiceSettings and the subclasses the services define (services/<name>/config.py
    or settings.py, once they exist)."""
    for name in POSTTRAIN_SERVICES:
        for module in ("config", "settings"):
            qualified = f"services.{name}.{module}"
            if importlib.util.find_spec(f"services.{name}") and importlib.util.find_spec(qualified):
                importlib.import_module(qualified)
    found, todo = [], [config.ServiceSettings]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    from services.console.settings import ConsoleSettings  # the web console: no gRPC server

    return [*found, ConsoleSettings]


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Environment variables a settings class reads: env_prefix + field name, uppercased,
    or the field's validation aliases (pydantic-settings applies no prefix to those); a
    nested settings object contributes its own names."""
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            names |= env_names(field.annotation)
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


@cache
def valid_posttrain_variables() -> frozenset[str]:
    return frozenset().union(*(env_names(cls) for cls in _settings_classes()))


def settings_for(service: str, monkeypatch: pytest.MonkeyPatch) -> config.ServiceSettings:
    """The settings object the service would build inside its container."""
    import os

    for key in list(os.environ):
        if key.startswith("POSTTRAIN_"):
            monkeypatch.delenv(key)
    for key, value in environment(service).items():
        monkeypatch.setenv(key, value)
    own = [c for c in _settings_classes() if c.__module__.startswith(f"services.{service}.")]
    return (own[0] if own else config.ServiceSettings)()


# ------------------------------------------------------------------ compose: structure


def test_compose_file_is_plain_valid_yaml():
    text = COMPOSE_FILE.read_text()
    assert "\t" not in text, "tabs in docker-compose.yml"
    doc = raw_compose()
    unknown = {k for k in doc if not k.startswith("x-")} - TOP_LEVEL_KEYS
    assert not unknown, f"unknown top-level keys {unknown} (`version` is obsolete)"
    for name, service in doc["services"].items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), f"invalid service name {name}"
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown service keys {unknown}"
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        unknown = set(service.get("healthcheck", {})) - HEALTHCHECK_KEYS
        assert not unknown, f"{name}: unknown healthcheck keys {unknown}"


def test_infrastructure_and_posttrain_services_exist():
    missing = (set(INFRA_IMAGES) | set(POSTTRAIN_SERVICES)) - set(services())
    assert not missing, f"services missing from docker-compose.yml: {missing}"
    for name, image_prefix in INFRA_IMAGES.items():
        assert services()[name]["image"].startswith(image_prefix), name


def test_posttrain_services_share_one_image_built_from_deploy_dockerfile():
    builds = {json.dumps(services()[n].get("build"), sort_keys=True) for n in POSTTRAIN_SERVICES}
    images = {services()[n].get("image") for n in POSTTRAIN_SERVICES}
    assert len(builds) == 1 and len(images) == 1, f"builds {builds}, images {images}"
    build = services()[POSTTRAIN_SERVICES[0]]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_service_runs_its_own_module(name):
    assert command_args(services()[name]) == ["python", "-m", f"services.{name}"]


# ------------------------------------------------------------------ compose: settings


def test_every_posttrain_variable_is_a_real_setting():
    for name in services():
        for key in environment(name):
            if key.startswith("POSTTRAIN_"):
                assert key in valid_posttrain_variables(), (
                    f"{name}: {key} is not read by any settings class in posttrain.config"
                )


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_service_settings_load_from_its_compose_environment(name, monkeypatch):
    settings = settings_for(name, monkeypatch)
    assert settings.service_name == name
    assert settings.grpc_port() == config.SERVICE_PORTS[name]
    assert int(environment(name)["POSTTRAIN_GRPC_PORT"]) == config.SERVICE_PORTS[name]
    # 127.0.0.1 inside a container can't be reached from the other containers.
    assert settings.grpc.host == "0.0.0.0"
    assert settings.state_dir.startswith("/"), "state_dir must be an absolute path (a volume)"
    assert make_url(settings.database_url()).get_backend_name() == "postgresql"
    assert settings.s3.secret_key, "no S3 secret key"


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_stop_grace_period_outlasts_grpc_shutdown_grace(name, monkeypatch):
    grace = settings_for(name, monkeypatch).grpc.grace_seconds
    stop = seconds(services()[name].get("stop_grace_period", "10s"))
    assert stop > grace, f"{name}: SIGKILL after {stop}s cuts the {grace}s RPC drain short"


# ------------------------------------------------------------------ compose: health, order


def test_every_long_running_service_has_a_healthcheck():
    for name, service in services().items():
        if is_one_shot(service):
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_service_healthcheck_asks_the_grpc_health_service_on_its_port(name):
    test = services()[name]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "posttrain.rpc.healthcheck"], test
    assert flag(test, "--port") == str(config.SERVICE_PORTS[name])


def test_depends_on_waits_for_health_or_completion():
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: list-form depends_on only waits for start"
        for target, spec in depends.items():
            assert target in services(), f"{name} depends on unknown service {target}"
            if is_one_shot(services()[target]):
                expected = "service_completed_successfully"
            elif "healthcheck" in services()[target]:
                expected = "service_healthy"
            else:
                expected = "service_started"
            assert spec.get("condition") == expected, f"{name} -> {target}: {spec}"


def _kafka_client_ports(kafka: dict[str, Any]) -> set[int]:
    """Ports whose advertised address is the compose service name: what clients can use."""
    env = environment("kafka")
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    ports = set()
    for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        listener, address = item.split("://", 1)
        host, port = address.rsplit(":", 1)
        bound = listeners.get(listener, "")
        if host == "kafka" and bound.rsplit(":", 1)[-1] == port:
            ports.add(int(port))
    return ports


def _minio_api_ports(minio: dict[str, Any]) -> set[int]:
    return {int(flag(command_args(minio), "--address", ":9000").rsplit(":", 1)[1])}


def _triton_ports(option: str, default: str) -> Any:
    return lambda triton: {int(flag(command_args(triton), option, default))}


def _postgres_ports(postgres: dict[str, Any]) -> set[int]:
    return {int(environment("postgres").get("PGPORT", "5432"))}


# Setting -> (image the address must point at, ports that image listens on there).
ADDRESS_SETTINGS = {
    "POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS": ("apache/kafka:", _kafka_client_ports),
    "POSTTRAIN_S3_ENDPOINT": ("minio/minio:", _minio_api_ports),
    "POSTTRAIN_TRITON_GRPC_URL": ("nvcr.io/nvidia/tritonserver:", _triton_ports("--grpc-port", "8001")),
    "POSTTRAIN_TRITON_HTTP_URL": ("nvcr.io/nvidia/tritonserver:", _triton_ports("--http-port", "8000")),
    "POSTTRAIN_DB_URL": ("postgres:", _postgres_ports),
    "POSTTRAIN_AUTH_DB_URL": ("postgres:", _postgres_ports),
}  # fmt: skip


def _addresses(key: str, value: str) -> list[tuple[str, int]]:
    if key.endswith("DB_URL"):
        url = make_url(value)
        return [(url.host, url.port or 5432)]
    found = []
    for item in value.split(","):
        host, port = item.strip().rsplit(":", 1)
        found.append((host, int(port)))
    return found


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_backing_addresses_name_services_it_waits_for_on_their_listening_ports(name):
    env = environment(name)
    for key in env:
        if re.search(r"_(URL|ENDPOINT|SERVERS)$", key):
            assert key in ADDRESS_SETTINGS, f"{name}: {key} is an address this test can't check"
    for key, (image, listening_ports) in ADDRESS_SETTINGS.items():
        if key not in env:
            continue
        for host, port in _addresses(key, env[key]):
            assert host in services(), f"{name}: {key} points at unknown host {host}"
            target = services()[host]
            assert target["image"].startswith(image), f"{name}: {key} points at {host}"
            assert port in listening_ports(target), f"{name}: {key} uses {host}:{port}"
            assert host in (services()[name].get("depends_on") or {}), (
                f"{name} uses {host} ({key}) but doesn't wait for it"
            )


def test_services_use_the_bucket_and_user_that_minio_init_creates():
    init = environment("minio-init")
    for name in POSTTRAIN_SERVICES:
        env = environment(name)
        assert env["POSTTRAIN_S3_BUCKET"] == init["BUCKET"], name
        assert env["POSTTRAIN_S3_ACCESS_KEY"] == init["SERVICE_ACCESS_KEY"], name
        assert env["POSTTRAIN_S3_SECRET_KEY"] == init["SERVICE_SECRET_KEY"], name
        assert init["SERVICE_ACCESS_KEY"] != init["MINIO_ROOT_USER"]
    for volume in services()["minio-init"]["volumes"]:
        assert (ROOT / volume.split(":")[0]).is_file(), volume


def test_services_reach_postgres_with_its_user_password_and_databases():
    pg = environment("postgres")
    databases = set(pg.get("SERVICE_DATABASES", "").split()) | {pg["POSTGRES_DB"]}
    own_databases = set()
    for name in POSTTRAIN_SERVICES:
        env = environment(name)
        assert env["PGPASSWORD"] == pg["POSTGRES_PASSWORD"], name
        own_databases.add(make_url(env["POSTTRAIN_DB_URL"]).database)
        for key in ("POSTTRAIN_DB_URL", "POSTTRAIN_AUTH_DB_URL"):
            url = make_url(env[key])
            assert url.username == pg["POSTGRES_USER"], f"{name}: {key}"
            assert url.password is None, f"{name}: password in {key}; use PGPASSWORD"
            assert url.database in databases, f"{name}: database {url.database} never created"
    assert len(own_databases) == len(POSTTRAIN_SERVICES), "services share a database"
    auth = {make_url(environment(n)["POSTTRAIN_AUTH_DB_URL"]).database for n in POSTTRAIN_SERVICES}
    assert len(auth) == 1, f"API keys are split over databases {auth}"
    assert "pg_isready" in services()["postgres"]["healthcheck"]["test"]
    mounts = [v.split(":") for v in services()["postgres"]["volumes"]]
    init = [src for src, dst, *_ in mounts if dst.startswith("/docker-entrypoint-initdb.d/")]
    assert init and all((ROOT / src).is_file() for src in init), "no database init script"
    assert "SERVICE_DATABASES" in (ROOT / init[0]).read_text()


# ------------------------------------------------------------------ compose: infrastructure


def test_kafka_is_a_working_single_node_kraft_cluster():
    env = environment("kafka")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{env['KAFKA_NODE_ID']}@kafka:9093"], voters
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listeners <= set(protocols), "a listener without a security protocol"
    # With one broker, any replication factor above 1 leaves the internal topics (consumer
    # offsets, transactions) unavailable: consumer groups never join.
    for key, value in env.items():
        if key.endswith(("REPLICATION_FACTOR", "MIN_ISR", "MIN_INSYNC_REPLICAS")):
            assert int(value) == 1, f"{key}={value} on a single-node cluster"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID is no Uuid"
    assert len(env["CLUSTER_ID"]) == 22
    assert _kafka_client_ports(services()["kafka"]), "no listener advertised as kafka:PORT"
    kafka_volumes = [v.split(":")[1] for v in services()["kafka"]["volumes"]]
    assert env["KAFKA_LOG_DIRS"] in kafka_volumes, "the Kafka log dir is not on a volume"


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_kafka_accepts_the_largest_event_a_service_sends(name, monkeypatch):
    largest = settings_for(name, monkeypatch).kafka.max_message_bytes
    broker = int(environment("kafka").get("KAFKA_MESSAGE_MAX_BYTES", 1048588))
    assert broker > largest, f"broker message.max.bytes {broker} <= client's {largest}"


def test_triton_serves_an_explicitly_controlled_model_repository():
    triton = services()["triton"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", triton["image"])
    args = command_args(triton)
    assert args[0] == "tritonserver"
    assert flag(args, "--model-control-mode") == "explicit"
    repository = flag(args, "--model-repository")
    assert repository in [v.split(":")[1] for v in triton["volumes"]], "repository not a volume"
    health = " ".join(triton["healthcheck"]["test"])
    assert f":{flag(args, '--http-port', '8000')}/v2/health/ready" in health, health
    assert "deploy" not in triton, "a GPU reservation belongs in deploy/compose/gpu.yml"


def test_gpu_override_reserves_nvidia_gpus_for_known_services():
    override = load_yaml(GPU_OVERRIDE)
    assert set(override) - {"services"} <= {k for k in override if k.startswith("x-")}
    assert "triton" in override["services"]
    for name, service in override["services"].items():
        assert name in services(), f"gpu.yml overrides unknown service {name}"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all(
            d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices
        ), name
    for name, service in services().items():
        assert "deploy" not in service, f"{name}: GPU reservation in the base file"


# ------------------------------------------------------------------ compose: volumes, ports


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


def test_named_volumes_are_declared_and_used_and_bind_mounts_exist():
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, service in services().items():
        for source, _ in _volume_mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_service_state_dir_is_on_its_own_volume(name):
    targets = dict((t, s) for s, t in _volume_mounts(services()[name]))
    state = environment(name)["POSTTRAIN_STATE_DIR"]
    assert state in targets, f"{name}: {state} is not on a volume"
    others = [n for n in POSTTRAIN_SERVICES if n != name]
    assert all(targets[state] not in dict(_volume_mounts(services()[o])) for o in others)


def test_published_ports_default_to_loopback_and_match_service_ports():
    for name, service in services().items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip, target = port.get("host_ip", ""), int(port["target"])
            else:
                host_ip, _, target = port.split("/")[0].rsplit(":", 2)
                target = int(target)
            assert host_ip == "127.0.0.1", f"{name}: {port} is open to the network by default"
            if name in config.SERVICE_PORTS:
                assert target == config.SERVICE_PORTS[name], f"{name}: {port}"


# ------------------------------------------------------------------ secrets


def test_secrets_are_required_variables_never_committed_values():
    for name, service in raw_compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|(?<!ACCESS)_KEY$", key):
                refs = _references(str(value))
                assert refs and all(op == ":?" for _, op, _ in refs), (
                    f"{name}: {key} must be ${{VAR:?...}} (required), not {value!r}"
                )


def test_env_example_documents_every_variable_without_secrets():
    required, optional = {}, {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line):
            required[m[1]] = m[2]
        elif m := re.fullmatch(r"# ([A-Z_][A-Z0-9_]*)=(.*)", line):
            optional[m[1]] = m[2]
    assert all(value == "" for value in required.values()), "a value in env.example"
    assert set(required) == required_variables()
    references = variables_in(COMPOSE_FILE) + variables_in(GPU_OVERRIDE)
    referenced = {name for name, _, _ in references}
    assert referenced - set(required) == set(optional), "env.example and compose disagree"
    for name, op, default in references:
        if op == ":-":
            assert optional[name] == default, f"{name}: env.example says {optional[name]}"


# ------------------------------------------------------------------ Dockerfile


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_builds_from_python_311_slim_as_a_non_root_user():
    instructions = _instructions()
    global_args = {}
    for op, arg in instructions:
        if op == "FROM":
            break
        if op == "ARG" and "=" in arg:
            key, value = arg.split("=", 1)
            global_args[key] = value
    for op, arg in instructions:
        if op == "FROM":
            image = interpolate(arg.split()[0], global_args)
            assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image
    users = [arg for op, arg in _final_stage() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


def test_dockerfile_generates_protos_into_the_package_it_installs():
    runs = " && ".join(arg for op, arg in _instructions() if op == "RUN")
    protogen = runs.find("python -m posttrain.protogen")
    install = runs.find("pip install --no-deps .")
    assert 0 <= protogen < install, "protogen must run before the project is installed"
    assert re.search(r"pip install --extra-index-url \S*https://download\.pytorch\.org/whl/", runs)
    assert "-r requirements" in runs


def _runtime_closure() -> set[str]:
    """Every distribution the project's runtime dependencies pull in (from the venv)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        environments = [{"extra": e} for e in ("", *req.extras)]
        for spec in distribution(req.name).requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate(e) for e in environments):
                todo.append(dep)
    return {name for name, _ in seen}


def test_dockerfile_installs_the_lock_without_dev_tools():
    runs = " ".join(arg for op, arg in _instructions() if op == "RUN")
    m = re.search(r"grep -v -E '([^']+)'\s+requirements\.lock", runs)
    assert m, "the lock is not filtered for dev tools"
    lock = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line]
    removed = {canonicalize_name(line.split("==")[0]) for line in lock if re.search(m[1], line)}
    locked = {canonicalize_name(line.split("==")[0]) for line in lock}
    runtime = _runtime_closure()
    assert not removed & runtime, f"runtime packages filtered out: {removed & runtime}"
    assert removed == locked - runtime, f"dev-only packages left in: {locked - runtime - removed}"


def _dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(path: str) -> bool:
    return any(
        path == p or path.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(path, p)
        for p in _dockerignore_patterns()
    )


def test_build_context_keeps_what_the_dockerfile_copies_and_drops_the_rest():
    for op, arg in _instructions():
        if op != "COPY" or "--from=" in arg:
            continue
        *sources, _dest = arg.split()
        for source in sources:
            if not any(ch in source for ch in "*?["):
                assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert not _ignored(source.rstrip("*")), f"COPY {source}: .dockerignore drops it"
    for secret_or_bulk in (".git", ".venv", ".env", "libs/posttrain/v1", ".posttrain"):
        assert _ignored(secret_or_bulk), f".dockerignore lets {secret_or_bulk} into the image"


def test_compose_commands_run_in_the_image():
    final = _final_stage()
    entrypoints = [arg for op, arg in final if op == "ENTRYPOINT"]
    assert not entrypoints or isinstance(json.loads(entrypoints[-1]), list), entrypoints
    cmd = [arg for op, arg in final if op == "CMD"]
    assert cmd and isinstance(json.loads(cmd[-1]), list), "CMD must be exec form"
    venv = re.search(r"python -m venv (\S+)", DOCKERFILE.read_text())[1]
    assert any(op == "COPY" and arg.split()[-1] == venv for op, arg in final)
    assert any(op == "ENV" and f"PATH={venv}/bin:" in arg for op, arg in final)
    for name in POSTTRAIN_SERVICES:
        assert command_args(services()[name])[0] == "python"


# ------------------------------------------------------------------ modules compose runs


@pytest.mark.parametrize("name", POSTTRAIN_SERVICES)
def test_service_module_is_runnable_once_written(name):
    if importlib.util.find_spec(f"services.{name}") is None:
        pytest.skip(f"services/{name} is not written yet")
    spec = importlib.util.find_spec(f"services.{name}")
    if spec.submodule_search_locations:  # a package: `python -m` needs __main__
        assert importlib.util.find_spec(f"services.{name}.__main__"), f"services/{name}/__main__.py"


def test_grpc_healthcheck_module_exists_once_the_rpc_package_does():
    if importlib.util.find_spec("posttrain.rpc") is None:
        pytest.skip("posttrain.rpc is not written yet")
    assert importlib.util.find_spec("posttrain.rpc.healthcheck"), "posttrain.rpc.healthcheck"


def test_console_reaches_every_service_and_holds_no_credentials(monkeypatch):
    from services.console.settings import ConsoleSettings

    console = services()["console"]
    assert command_args(console) == ["python", "-m", "services.console"]
    for key in list(os.environ):
        if key.startswith("POSTTRAIN_"):
            monkeypatch.delenv(key)
    for key, value in environment("console").items():
        monkeypatch.setenv(key, value)
    settings = ConsoleSettings()
    assert settings.host == "0.0.0.0"
    for name, port in config.SERVICE_PORTS.items():
        assert getattr(settings, f"{name}_target") == f"{name}:{port}"
    assert "POSTTRAIN_CONSOLE_SECRET_KEY" in required_variables()
    # People sign in with their own keys: the console gets no key, password or S3 secret.
    held = set(environment("console"))
    assert not held & {"PGPASSWORD", "POSTTRAIN_S3_SECRET_KEY", "POSTTRAIN_BOOTSTRAP_ADMIN_KEY"}
