"""What a SubmitJob asks for -> the TrainingJobConfig the job will run, or an error naming
the argument that is wrong (`method`, `config_yaml`, `hyperparameters.<key>`).

The config is built from, in order: TrainingJobConfig's defaults, the service's defaults
(e.g. a checkpoint cadence, so that every job can resume), a full config YAML if the
caller sent one, then each hyper-parameter. A hyper-parameter is a TrainingJobConfig key
(`lr`, `max_steps`), a method option (`rank`, or `method_config.rank`), with its value
written as a YAML scalar or list, as on the command line. The stored config has no
machine path: the worker sets base_model to its local copy of the registered base.

How many processes a job trains with (`resources`) is checked by job_resources: it is not
part of the config, but the config's batch_size is per process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from posttrain.rpc.errors import FieldViolation, InvalidArgument
from posttrain.training import METHODS, TrainingJobConfig
from posttrain.training.distributed import DISTRIBUTED_METHODS

# Keys a caller may not set: they come from other request fields.
RESERVED_KEYS = {
    "base_model": "is set from the request's base_model (a registered base model)",
    "method": "is set from the request's method field",
}
_FIELDS = {f.name: f for f in dataclasses.fields(TrainingJobConfig)}


def build_job_config(
    method: str,
    hyperparameters: Mapping[str, str],
    config_yaml: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> TrainingJobConfig:
    """The job's config; InvalidArgument naming the field on any problem. `method` is a
    name in posttrain.training.METHODS, or "" to take it from `config_yaml`."""
    given = _from_yaml(config_yaml)
    method = _method(method, given.get("method"))
    values = {**TrainingJobConfig().to_dict(), **(defaults or {}), **given, "method": method}
    values["base_model"] = ""
    config = _validated(values, "config_yaml" if config_yaml else "method")
    option_names = set(config.method_spec_config().__dataclass_fields__)
    for key in sorted(hyperparameters):
        field = f"hyperparameters.{key}"
        path = _config_path(key, option_names, method, field)
        values = _with_value(values, path, _parse_value(hyperparameters[key], field))
        config = _validated(values, field)
    return config


def job_resources(
    processes: int, nodes: int, method: str, *, max_processes: int, max_nodes: int
) -> tuple[int, int]:
    """(processes per node, nodes) a job asks for (`resources`, 0 = 1), or InvalidArgument
    naming every field that is wrong: more processes than one worker runs
    (`max_processes`), more nodes than the trainer offers (`max_nodes`: 1 unless its
    workers share a folder for multi-node checkpoints), several processes for a method
    that trains in one."""
    violations = []
    if processes < 0:
        violations.append(FieldViolation("resources.processes", f"{processes} is negative"))
    elif processes > max_processes:
        violations.append(
            FieldViolation(
                "resources.processes",
                f"{processes} is more than a training worker runs ({max_processes}, the "
                "trainer's max_job_processes: the GPUs of one worker)",
            )
        )
    if nodes < 0:
        violations.append(FieldViolation("resources.nodes", f"{nodes} is negative"))
    elif nodes > max_nodes:
        violations.append(
            FieldViolation(
                "resources.nodes",
                f"{nodes} is more than this trainer offers ({max_nodes}, its max_job_nodes; "
                "multi-node jobs need workers with a shared folder: deploy/README.md)",
            )
        )
    total = max(processes, 1) * max(nodes, 1)
    if total > 1 and method not in DISTRIBUTED_METHODS and not violations:
        field = "resources.processes" if processes > 1 else "resources.nodes"
        violations.append(
            FieldViolation(
                field,
                f"{method} trains in one process only; several processes (FSDP2) support "
                f"{sorted(DISTRIBUTED_METHODS)}",
            )
        )
    if violations:
        raise InvalidArgument(violations=violations)
    return max(processes, 1), max(nodes, 1)


def _from_yaml(config_yaml: str) -> dict[str, Any]:
    if not config_yaml.strip():
        return {}
    try:
        loaded = yaml.safe_load(config_yaml)
    except yaml.YAMLError as exc:
        raise InvalidArgument("config_yaml", f"is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise InvalidArgument("config_yaml", "must be a mapping of TrainingJobConfig keys")
    unknown = sorted(set(loaded) - set(_FIELDS))
    if unknown:
        raise InvalidArgument(
            violations=[
                FieldViolation(f"config_yaml.{k}", f"unknown key; valid: {sorted(_FIELDS)}")
                for k in unknown
            ]
        )
    loaded.pop("base_model", None)  # a machine path from where the YAML was written
    return loaded


def _method(requested: str, from_yaml: Any) -> str:
    if requested and from_yaml and requested != from_yaml:
        raise InvalidArgument(
            "method", f"is {requested!r} but config_yaml says method: {from_yaml!r}"
        )
    method = requested or from_yaml
    if not method:
        raise InvalidArgument("method", f"is required: one of {sorted(METHODS)}")
    if method not in METHODS:
        raise InvalidArgument("method", f"unknown method {method!r}; known: {sorted(METHODS)}")
    return str(method)


def _config_path(key: str, option_names: set[str], method: str, field: str) -> list[str]:
    if key in RESERVED_KEYS:
        raise InvalidArgument(field, RESERVED_KEYS[key])
    if key in _FIELDS:
        return [key]
    if key.startswith("method_config.") and key.count(".") == 1:
        return ["method_config", key.split(".", 1)[1]]
    if key in option_names:
        return ["method_config", key]
    raise InvalidArgument(
        field,
        f"unknown hyper-parameter; valid: {sorted(set(_FIELDS) - set(RESERVED_KEYS))} "
        f"and the {method} options {sorted(option_names)}",
    )


def _parse_value(raw: str, field: str) -> Any:
    if raw == "":
        raise InvalidArgument(field, "has no value")
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InvalidArgument(field, f"{raw!r} is not a YAML value: {exc}") from None


def _with_value(values: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    updated = dict(values)
    if len(path) == 1:
        updated[path[0]] = value
    else:
        updated[path[0]] = {**(updated.get(path[0]) or {}), path[1]: value}
    return updated


def _validated(values: dict[str, Any], field: str) -> TrainingJobConfig:
    try:
        config = TrainingJobConfig.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(field, str(exc)) from None
    for name, f in _FIELDS.items():
        problem = _type_problem(getattr(config, name), str(f.type))
        if problem:
            raise InvalidArgument(field, f"{name}: {problem}")
    return config


def _type_problem(value: Any, declared: str) -> str | None:
    """Why `value` does not fit a scalar field's declared type, or None."""
    kinds = {k.strip() for k in declared.split("|")}
    if value is None:
        return None if "None" in kinds else "must not be empty"
    if "bool" in kinds:
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if "int" in kinds:
        return (
            None
            if isinstance(value, int) and not isinstance(value, bool)
            else (f"{value!r} is not an integer")
        )
    if "float" in kinds:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"{value!r} is not a number"
    if "str" in kinds:
        return None if isinstance(value, str) else f"{value!r} is not a string"
    return None
