"""The gateway's added latency over calling Triton directly: same requests, same model.

    python benchmarks/bench_gateway.py [--requests 300] [--max-tokens 8] [--clients 1]
        [--db-url URL] [--seconds 120]

Starts SeaweedFS and tritonserver on free loopback ports (posttrain.stack), makes the tiny
random Llama of the tests and one random LoRA adapter, uploads both as folder artifacts,
deploys the adapter through the real deployment controller, and serves the gateway's
servicer in process (API-key auth, route lookup, inference record in the DB, events
handed to the buffer). Then each client thread sends the same greedy request, alternately
straight to Triton (plain tritonclient, the same inputs the gateway sends) and through
the gateway's Generate, so both see the same machine load. Prints p50 / p90 / p99 / mean
of each path and the differences. Everything stays on loopback; --seconds bounds the
measuring time (whatever --requests says).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="per path and client")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--clients", type=int, default=1, help="client threads")
    parser.add_argument(
        "--db-url",
        default="",
        help="gateway DB, an empty database or schema: its tables are created there "
        "(default: SQLite in a temp dir)",
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="measuring time bound")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    import torch
    import tritonclient.grpc as grpcclient

    from posttrain.config import GrpcServerSettings, TritonSettings
    from posttrain.db import apply_migrations, create_db_engine, session_scope
    from posttrain.events import add_to_outbox
    from posttrain.gateway.triton import Sampling, build_inputs
    from posttrain.rpc import (
        AUTH_MIGRATIONS,
        ApiKeyStore,
        GrpcServer,
        make_channel,
        standard_interceptors,
    )
    from posttrain.serving.synthetic import make_random_adapter, make_tiny_base
    from posttrain.stack import LocalStack, StackPorts
    from posttrain.storage import ArtifactStore
    from posttrain.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc
    from services.gateway.app import build_app
    from services.gateway.servicer import SERVICE_NAME, GatewayServicer
    from services.gateway.settings import GatewaySettings

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        stack = LocalStack(state_dir=work / "stack", ports=StackPorts.free())
        try:
            print("starting S3 and tritonserver ...")
            stack.up(["s3", "triton"])
            base = make_tiny_base(work / "tiny-llama", seed=0)
            adapter = make_random_adapter(base, work / "adapter", kind="lora", seed=1)
            store = ArtifactStore.from_settings(stack.s3_settings(bucket="bench"))
            store.ensure_bucket()
            base_ref = store.put_folder(base, "models/bench/base")
            adapter_ref = store.put_folder(adapter, "models/bench/adapter")

            engine = create_db_engine(args.db_url or f"sqlite:///{work / 'gateway.sqlite3'}")
            apply_migrations(engine, "auth", AUTH_MIGRATIONS)
            settings = GatewaySettings(
                triton_model_repository=str(stack.triton_model_repository),
                model_cache_dir=str(work / "cache"),
                torch_threads=1,
                triton=TritonSettings(grpc_url=stack.triton_grpc_url),
                s3=stack.s3_settings(bucket="bench"),
                grpc=GrpcServerSettings(max_workers=16),
            )
            app = build_app(settings, engine)
            request = events_pb2.DeploymentRequested(
                deployment_id=f"dep-{uuid.uuid4().hex[:8]}",
                tenant="bench",
                model_version_id="bench-bot:v1",
                kind=common_pb2.MODEL_KIND_ADAPTER,
                base_model="tiny-llama",
                artifacts=[adapter_ref.to_proto()],
                use_case="bench",
                stage="production",
            )
            request.base_model_weights.CopyFrom(base_ref.to_proto())
            print("deploying the adapter (model load) ...")
            with session_scope(engine) as session:
                row = app.controller.handle(
                    session,
                    request,
                    lambda t, p, *, aggregate_id: add_to_outbox(
                        session, t, p, producer="bench", aggregate_id=aggregate_id
                    ),
                )
                model, lora, error, seconds = (
                    row.triton_model,
                    row.lora_name,
                    row.error,
                    row.seconds,
                )
            if error:
                raise SystemExit(f"deployment failed: {error}")
            print(f"deployed in {seconds:.1f}s: {model} / {lora}")

            keys = ApiKeyStore(engine)
            key = keys.create_key("bench", ["client"], "bench")
            server = GrpcServer(
                settings.grpc,
                [(gateway_pb2_grpc.add_InferenceGatewayServicer_to_server, GatewayServicer(app))],
                service_names=[SERVICE_NAME],
                interceptors=standard_interceptors(keys),
                port=0,
                host="127.0.0.1",
            )
            server.start()
            prompt = "Summarise the release notes in one line:"
            sampling = Sampling(max_tokens=args.max_tokens)
            gateway_request = gateway_pb2.GenerateRequest(
                use_case="bench",
                prompt=prompt,
                sampling=gateway_pb2.SamplingParams(max_tokens=args.max_tokens),
            )
            direct_ms: list[float] = []
            gateway_ms: list[float] = []
            lock = threading.Lock()

            def client(n: int) -> None:
                triton = grpcclient.InferenceServerClient(stack.triton_grpc_url)
                channel = make_channel(server.address, api_key=key)
                stub = gateway_pb2_grpc.InferenceGatewayStub(channel)
                texts = set()
                deadline = float("inf")
                for i in range(args.warmup + n):
                    timed = i >= args.warmup
                    if i == args.warmup:
                        deadline = time.monotonic() + args.seconds
                    if time.monotonic() > deadline:
                        break
                    order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                    for path in order:
                        started = time.perf_counter()
                        if path == "direct":
                            result = triton.infer(model, build_inputs(prompt, lora, sampling))
                            text = result.as_numpy("text_output")[0, 0].decode()
                        else:
                            text = stub.Generate(gateway_request, timeout=60).text
                        elapsed = (time.perf_counter() - started) * 1000.0
                        texts.add(text)
                        if timed:
                            with lock:
                                (direct_ms if path == "direct" else gateway_ms).append(elapsed)
                assert len(texts) == 1, f"the two paths answered differently: {texts}"
                channel.close()
                triton.close()

            threads = [
                threading.Thread(target=client, args=(args.requests,)) for _ in range(args.clients)
            ]
            began = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - began
            server.stop(grace=0)
            app.close()
            engine.dispose()
        finally:
            stack.down()

    print(
        f"\n{len(direct_ms)} + {len(gateway_ms)} timed requests, {args.clients} client(s), "
        f"max_tokens {args.max_tokens}, greedy, {wall:.0f}s"
    )
    print(f"{'path':<10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    rows = {"triton": direct_ms, "gateway": gateway_ms}
    for name, values in rows.items():
        print(
            f"{name:<10}{percentile(values, 50):>10.2f}{percentile(values, 90):>10.2f}"
            f"{percentile(values, 99):>10.2f}{statistics.fmean(values):>10.2f}"
        )
    print(
        f"{'added':<10}{percentile(gateway_ms, 50) - percentile(direct_ms, 50):>10.2f}"
        f"{percentile(gateway_ms, 90) - percentile(direct_ms, 90):>10.2f}"
        f"{percentile(gateway_ms, 99) - percentile(direct_ms, 99):>10.2f}"
        f"{statistics.fmean(gateway_ms) - statistics.fmean(direct_ms):>10.2f}"
    )


if __name__ == "__main__":
    main()
