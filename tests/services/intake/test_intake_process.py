"""The intake service as a real process: kill -9 in the middle of an upload, restart,
and nothing half-made is visible; the next upload goes through."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from conftest import SAMPLE_ROWS, jsonl, upload_requests

from posttrain.rpc import make_channel
from posttrain.storage import ArtifactStore
from posttrain.v1 import intake_pb2, intake_pb2_grpc

ADMIN_KEY = "pt_testadmin_" + "s" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "services.intake"], env=env)
    channel = make_channel(f"127.0.0.1:{env['POSTTRAIN_GRPC_PORT']}", api_key=ADMIN_KEY)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            intake_pb2_grpc.IntakeServiceStub(channel).ListDatasets(
                intake_pb2.ListDatasetsRequest(), timeout=2
            )
            channel.close()
            return proc
        except grpc.RpcError:
            assert proc.poll() is None, "the intake service exited during start-up"
            time.sleep(0.3)
    raise AssertionError("intake service did not answer within 60s")


@pytest.mark.slow
def test_kill_9_mid_upload_leaves_no_half_version(stack, s3_settings, tmp_path):
    env = {
        **os.environ,
        "POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "POSTTRAIN_S3_ENDPOINT": s3_settings.endpoint,
        "POSTTRAIN_S3_ACCESS_KEY": s3_settings.access_key,
        "POSTTRAIN_S3_SECRET_KEY": s3_settings.secret_key,
        "POSTTRAIN_S3_BUCKET": s3_settings.bucket,
        "POSTTRAIN_STATE_DIR": str(tmp_path),
        "POSTTRAIN_GRPC_PORT": str(_free_port()),
        "POSTTRAIN_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "POSTTRAIN_AUTH_BOOTSTRAP_TENANT": "acme",
    }
    proc = _start(env)
    channel = make_channel(f"127.0.0.1:{env['POSTTRAIN_GRPC_PORT']}", api_key=ADMIN_KEY)
    stub = intake_pb2_grpc.IntakeServiceStub(channel)
    data = jsonl(SAMPLE_ROWS * 400)

    def slow_upload():
        for index, request in enumerate(upload_requests("support", data, chunk=2048)):
            if index == 20:
                os.kill(proc.pid, signal.SIGKILL)  # the service dies mid-stream
            yield request
            time.sleep(0.005)

    with pytest.raises(grpc.RpcError) as err:
        stub.UploadDataset(slow_upload())
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    proc.wait(10)
    channel.close()

    proc = _start(env)
    try:
        channel = make_channel(f"127.0.0.1:{env['POSTTRAIN_GRPC_PORT']}", api_key=ADMIN_KEY)
        stub = intake_pb2_grpc.IntakeServiceStub(channel)
        assert list(stub.ListDatasets(intake_pb2.ListDatasetsRequest()).datasets) == []
        store = ArtifactStore.from_settings(s3_settings)
        assert [o.key for o in store.list_objects("datasets/")] == []
        resp = stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS)))
        assert resp.version.rows == len(SAMPLE_ROWS)
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
