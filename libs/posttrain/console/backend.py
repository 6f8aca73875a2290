"""The console's side of the services' gRPC APIs: one channel per service, shared by
every signed-in person; each call carries the person's own API key as its credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from posttrain.config import SERVICE_PORTS
from posttrain.rpc import make_channel
from posttrain.v1 import (
    evaluation_pb2_grpc,
    gateway_pb2_grpc,
    intake_pb2_grpc,
    registry_pb2_grpc,
    training_pb2_grpc,
)

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "intake": intake_pb2_grpc.IntakeServiceStub,
    "registry": registry_pb2_grpc.RegistryServiceStub,
    "trainer": training_pb2_grpc.TrainingServiceStub,
    "evaluator": evaluation_pb2_grpc.EvaluationServiceStub,
    "gateway": gateway_pb2_grpc.InferenceGatewayStub,
}


@dataclass(frozen=True)
class ServiceTargets:
    """host:port of each service's gRPC API."""

    intake: str = f"127.0.0.1:{SERVICE_PORTS['intake']}"
    registry: str = f"127.0.0.1:{SERVICE_PORTS['registry']}"
    trainer: str = f"127.0.0.1:{SERVICE_PORTS['trainer']}"
    evaluator: str = f"127.0.0.1:{SERVICE_PORTS['evaluator']}"
    gateway: str = f"127.0.0.1:{SERVICE_PORTS['gateway']}"


class Backend:
    """Calls RPCs on behalf of a caller. The stubs are synchronous; calls run in a thread
    pool so that a slow service does not hold up the other pages."""

    def __init__(
        self,
        targets: ServiceTargets,
        *,
        timeout_s: float = 15.0,
        tls_ca_file: str | None = None,
        tls: bool = False,
        workers: int = 16,
    ) -> None:
        self.timeout_s = timeout_s
        self._channels = {
            name: make_channel(getattr(targets, name), tls_ca_file=tls_ca_file, tls=tls)
            for name in STUBS
        }
        self._stubs = {name: make(self._channels[name]) for name, make in STUBS.items()}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="console-rpc")

    @staticmethod
    def credentials(api_key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {api_key}"),)

    def call_sync(
        self, api_key: str, service: str, method: str, request: Any, timeout_s: float | None = None
    ) -> Any:
        rpc = getattr(self._stubs[service], method)
        return rpc(request, metadata=self.credentials(api_key), timeout=timeout_s or self.timeout_s)

    async def call(
        self, api_key: str, service: str, method: str, request: Any, timeout_s: float | None = None
    ) -> Any:
        """The RPC's response; raises grpc.RpcError as the service answered."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self.call_sync(api_key, service, method, request, timeout_s)
        )

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Runs a blocking function (e.g. reading a stream) in the RPC pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def stream(self, api_key: str, service: str, method: str, request: Any, timeout_s: float):
        rpc = getattr(self._stubs[service], method)
        return rpc(request, metadata=self.credentials(api_key), timeout=timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for channel in self._channels.values():
            channel.close()
