"""The gateway under load: N concurrent clients for a bounded time, a mixed-adapter workload.

    python benchmarks/load_gateway.py [--clients 8] [--seconds 20] [--tenants 3]
        [--max-tokens 4] [--db-url URL]

Starts SeaweedFS and tritonserver on free loopback ports, makes the tests' tiny random
Llama and one random LoRA adapter per tenant, deploys each tenant's adapter (all on the
one shared base) through the real deployment controller, and serves the gateway's
servicer in process (API-key auth, route lookup, inference records in the DB). Each
client thread then sends Generate requests for a tenant picked at random per request,
with its own key, until the time is up. Prints requests/s, p50/p90/p99 latency, errors
by status code and the accounting: every request sent is answered or counted as an
error, and the gateway recorded one inference row per answer, per tenant.

tests/services/robustness/test_load.py runs the same functions (a few clients for a few
seconds, on the test session's stack) and asserts zero errors and complete accounting;
speed targets belong here, not in tests.
"""

from __future__ import annotations

import argparse
import collections
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import sqlalchemy as sa
from sqlalchemy import Engine

from posttrain.config import GrpcServerSettings, S3Settings, TritonSettings
from posttrain.db import apply_migrations, create_db_engine, session_scope
from posttrain.events import add_to_outbox
from posttrain.gateway.tables import InferenceRow
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.serving.synthetic import make_random_adapter, make_tiny_base
from posttrain.storage import ArtifactStore
from posttrain.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.app import GatewayApp, build_app
from services.gateway.servicer import SERVICE_NAME, GatewayServicer
from services.gateway.settings import GatewaySettings

USE_CASE = "support"
PROMPTS = ["Hello there, how are", "Summarise the release notes:", "Reset my router please"]


@dataclass
class MixedGateway:
    """A gateway serving one adapter per tenant on one shared base."""

    app: GatewayApp
    engine: Engine
    server: GrpcServer
    keys: dict[str, str]  # tenant -> its client key
    lora: dict[str, str]  # tenant -> the LoRA name serving it
    triton_models: set[str]


@dataclass
class LoadResult:
    clients: int
    seconds: float
    sent: int = 0
    ok_by_tenant: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)  # status name
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(self.ok_by_tenant.values())

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def report(self) -> str:
        lines = [
            f"{self.clients} clients, {self.seconds:.1f}s, {len(self.ok_by_tenant)} tenants: "
            f"{self.sent} sent, {self.ok} ok, {sum(self.errors.values())} errors "
            f"{dict(self.errors) or ''}",
            f"requests/s {self.ok / self.seconds:.1f}   p50 {self.percentile(50):.1f} ms   "
            f"p90 {self.percentile(90):.1f} ms   p99 {self.percentile(99):.1f} ms   "
            f"max {max(self.latencies_ms, default=float('nan')):.1f} ms",
            "ok by tenant: " + ", ".join(f"{t} {n}" for t, n in sorted(self.ok_by_tenant.items())),
        ]
        return "\n".join(lines)


def gateway_settings(
    s3: S3Settings, triton_grpc_url: str, triton_repository: Path, cache: Path, clients: int
) -> GatewaySettings:
    return GatewaySettings(
        triton_model_repository=str(triton_repository),
        model_cache_dir=str(cache),
        torch_threads=1,
        max_batch_size=8,
        triton=TritonSettings(grpc_url=triton_grpc_url),
        s3=s3,
        grpc=GrpcServerSettings(max_workers=max(8, clients * 2), grace_seconds=0),
    )


@contextmanager
def mixed_gateway(
    settings: GatewaySettings, engine: Engine, work: Path, tenants: list[str]
) -> Iterator[MixedGateway]:
    """Deploy one random LoRA adapter per tenant on one tiny base, serve the gateway."""
    store = ArtifactStore.from_settings(settings.s3)
    store.ensure_bucket()
    base_dir = make_tiny_base(work / "tiny-llama", seed=0)
    base_ref = store.put_folder(base_dir, "models/load/base")
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    app = build_app(settings, engine)
    app.gateway.events = lambda *event: None  # no broker here: the load is the gateway's
    key_store = ApiKeyStore(engine)
    server = GrpcServer(
        settings.grpc,
        [(gateway_pb2_grpc.add_InferenceGatewayServicer_to_server, GatewayServicer(app))],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(key_store),
        port=0,
        host="127.0.0.1",
    )
    try:
        lora, models = {}, set()
        for i, tenant in enumerate(tenants):
            adapter = make_random_adapter(base_dir, work / f"adapter-{tenant}", seed=i + 1)
            ref = store.put_folder(adapter, f"models/load/{tenant}/adapter")
            request = events_pb2.DeploymentRequested(
                deployment_id=f"dep-{tenant}-{uuid.uuid4().hex[:6]}",
                tenant=tenant,
                model_version_id=f"{tenant}-bot:v1",
                kind=common_pb2.MODEL_KIND_ADAPTER,
                base_model="tiny-llama",
                artifacts=[ref.to_proto()],
                use_case=USE_CASE,
                stage="production",
                requested_by="load",
            )
            request.base_model_weights.CopyFrom(base_ref.to_proto())
            with session_scope(engine) as session:
                row = app.controller.handle(
                    session,
                    request,
                    lambda t, p, *, aggregate_id, s=session: add_to_outbox(
                        s, t, p, producer="load", aggregate_id=aggregate_id
                    ),
                )
                if row.error:
                    raise RuntimeError(f"deploying {tenant}'s adapter failed: {row.error}")
                lora[tenant], model = row.lora_name, row.triton_model
            models.add(model)
        keys = {t: key_store.create_key(f"load-{t}", ["client"], t) for t in tenants}
        server.start()
        yield MixedGateway(app, engine, server, keys, lora, models)
    finally:
        server.stop(grace=0)
        app.close()


def run_load(
    gateway: MixedGateway, *, clients: int, seconds: float, max_tokens: int, seed: int = 0
) -> LoadResult:
    """`clients` threads, each with a channel per tenant, sending Generate for a random
    tenant and prompt until `seconds` are up; every request ends as ok or an error."""
    result = LoadResult(clients=clients, seconds=seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        channels = {
            t: make_channel(gateway.server.address, api_key=k) for t, k in gateway.keys.items()
        }
        stubs = {t: gateway_pb2_grpc.InferenceGatewayStub(c) for t, c in channels.items()}
        tenants = sorted(stubs)
        start.wait()
        try:
            while time.monotonic() < deadline[0]:
                tenant = rng.choice(tenants)
                request = gateway_pb2.GenerateRequest(
                    use_case=USE_CASE,
                    prompt=rng.choice(PROMPTS),
                    sampling=gateway_pb2.SamplingParams(max_tokens=max_tokens),
                )
                began = time.perf_counter()
                try:
                    stubs[tenant].Generate(request, timeout=60)
                    failure = None
                except grpc.RpcError as exc:
                    failure = exc.code().name
                elapsed = (time.perf_counter() - began) * 1000.0
                with lock:
                    result.sent += 1
                    if failure:
                        result.errors[failure] += 1
                    else:
                        result.ok_by_tenant[tenant] += 1
                        result.latencies_ms.append(elapsed)
        finally:
            for channel in channels.values():
                channel.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - began
    return result


def recorded_by_tenant(gateway: MixedGateway) -> dict[str, int]:
    """Inference rows the gateway wrote, per tenant, once its record buffer is flushed."""
    if not gateway.app.gateway.records.flush(30):
        raise RuntimeError("the gateway's inference records did not flush in 30s")
    with gateway.engine.connect() as conn:
        rows = conn.execute(
            sa.select(InferenceRow.tenant, sa.func.count()).group_by(InferenceRow.tenant)
        ).all()
    return {tenant: count for tenant, count in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="load time bound")
    parser.add_argument("--tenants", type=int, default=3, help="one adapter each")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--db-url", default="", help="gateway DB (default: SQLite in a temp dir)")
    args = parser.parse_args()

    import torch

    from posttrain.stack import LocalStack, StackPorts

    torch.set_num_threads(1)
    tenants = [f"tenant-{chr(ord('a') + i)}" for i in range(args.tenants)]
    with tempfile.TemporaryDirectory(prefix="load-gateway-") as tmp:
        work = Path(tmp)
        stack = LocalStack(state_dir=work / "stack", ports=StackPorts.free())
        try:
            print("starting S3 and tritonserver ...")
            stack.up(["s3", "triton"])
            engine = create_db_engine(args.db_url or f"sqlite:///{work / 'gateway.sqlite3'}")
            settings = gateway_settings(
                stack.s3_settings(bucket="load"),
                stack.triton_grpc_url,
                stack.triton_model_repository,
                work / "cache",
                args.clients,
            )
            print(f"deploying {len(tenants)} tenants' adapters on one base ...")
            with mixed_gateway(settings, engine, work, tenants) as gateway:
                print(f"triton models {sorted(gateway.triton_models)}, lora {gateway.lora}")
                run_load(gateway, clients=args.clients, seconds=args.warmup_s, max_tokens=1)
                before = recorded_by_tenant(gateway)
                result = run_load(
                    gateway, clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens
                )
                after = recorded_by_tenant(gateway)
            engine.dispose()
        finally:
            stack.down()
    recorded = {t: after.get(t, 0) - before.get(t, 0) for t in tenants}
    print()
    print(result.report())
    print(f"recorded by the gateway: {recorded}")
    complete = result.sent == result.ok + sum(result.errors.values()) and recorded == dict(
        result.ok_by_tenant
    )
    print(f"accounting complete: {complete}; errors: {sum(result.errors.values())}")


if __name__ == "__main__":
    main()
