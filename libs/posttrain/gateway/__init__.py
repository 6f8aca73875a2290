"""The gateway's core: deployments on Triton, the route table, the request path of client
apps (routing, limits, A/B assignment, inference records, feedback) and experiments.

controller   deployment.requested -> files in Triton's model repository, a model load or
             an adapter install, a smoke request, a route, deployment.completed
routes       the route table as the request path reads it; ListDeployments
inference    InferenceGateway: Generate / GenerateStream / RecordFeedback
experiments  ExperimentBook: create, stop, guardrail, report
grading      ExperimentGrader: the experiment judge's scores, off the request path
triton       TritonLLM: tritonclient calls and their errors as gateway statuses
limits       per-tenant token buckets
names        route names ("x", "x/staging"), Triton model and lora names
tables       the gateway's tables and migrations

Library code: no gRPC server and no Kafka client here (services/gateway wires those in);
events leave through an emit callable (outbox) or an event sink.
"""

from posttrain.gateway.controller import (
    ControllerOptions,
    DeploymentController,
    DeploymentRefused,
    ServingLayout,
)
from posttrain.gateway.experiments import (
    ExperimentBook,
    RunningExperiment,
    VariantSpec,
    experiment_proto,
    list_experiments,
)
from posttrain.gateway.grading import ExperimentGrader, experiment_judge
from posttrain.gateway.inference import Assignment, GatewayLimits, InferenceGateway
from posttrain.gateway.routes import (
    Target,
    deployment_proto,
    deployment_state,
    list_deployments,
)
from posttrain.gateway.tables import GATEWAY_MIGRATIONS
from posttrain.gateway.triton import Completion, Sampling, TritonLLM

__all__ = [
    "GATEWAY_MIGRATIONS",
    "Assignment",
    "Completion",
    "ControllerOptions",
    "DeploymentController",
    "DeploymentRefused",
    "ExperimentBook",
    "ExperimentGrader",
    "GatewayLimits",
    "InferenceGateway",
    "RunningExperiment",
    "Sampling",
    "ServingLayout",
    "Target",
    "TritonLLM",
    "VariantSpec",
    "deployment_proto",
    "deployment_state",
    "experiment_judge",
    "experiment_proto",
    "list_experiments",
    "list_deployments",
]
