"""The local stack manager and the real servers it starts."""

from __future__ import annotations

import socket
import textwrap

import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc

from posttrain.config import ServiceSettings
from posttrain.stack import LocalStack, StackError, StackPorts

ECHO_MODEL = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
                upper = np.array([t.upper() for t in text.reshape(-1)], dtype=object)
                out = pb_utils.Tensor("text_output", upper.reshape(text.shape))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)
ECHO_CONFIG = textwrap.dedent(
    """
    name: "{name}"
    backend: "python"
    max_batch_size: 0
    input [ {{ name: "text_input", data_type: TYPE_STRING, dims: [ -1 ] }} ]
    output [ {{ name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] }} ]
    instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
    """
)


def test_triton_loads_serves_and_unloads_a_model_from_a_temporary_repository(triton):
    name = "echo_upper"
    model_dir = triton.triton_model_repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(ECHO_CONFIG.format(name=name))
    (model_dir / "1" / "model.py").write_text(ECHO_MODEL)

    client = triton_grpc.InferenceServerClient(triton.triton_grpc_url)
    assert client.is_server_live()
    client.load_model(name)
    try:
        assert client.is_model_ready(name)
        inp = triton_grpc.InferInput("text_input", [2], "BYTES")
        inp.set_data_from_numpy(np.array([b"hello", b"triton"], dtype=object))
        result = client.infer(
            name, [inp], outputs=[triton_grpc.InferRequestedOutput("text_output")]
        )
        assert list(result.as_numpy("text_output")) == [b"HELLO", b"TRITON"]
    finally:
        client.unload_model(name)
    assert not client.is_model_ready(name)


def test_up_is_idempotent_and_down_leaves_no_process(tmp_path):
    stack = LocalStack(state_dir=tmp_path, ports=StackPorts.free())
    try:
        [first] = stack.up(["kafka"])
        assert first.healthy and first.pid
        [again] = stack.up(["kafka"])
        assert again.pid == first.pid  # left alone, not restarted
    finally:
        assert stack.down() == ["kafka"]
    assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() == "zombie"
    [after] = stack.status(["kafka"])
    assert not after.running and not after.healthy
    assert stack.down() == []  # nothing left to stop


def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path):
    ports = StackPorts.free()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports.kafka))
    blocker.listen()
    stack = LocalStack(state_dir=tmp_path, ports=ports)
    try:
        with pytest.raises(StackError) as err:
            stack.up(["kafka"])
    finally:
        blocker.close()
        stack.down()
    message = str(err.value)
    assert message.startswith("kafka ")
    assert str(tmp_path / "logs" / "kafka.log") in message
    [status] = stack.status(["kafka"])
    assert not status.running


def test_stack_records_itself_so_status_and_down_find_it_again(tmp_path):
    ports = StackPorts.free()
    created = LocalStack.load_or_create(tmp_path, ports, random_secret=True)
    found = LocalStack.load_or_create(tmp_path, StackPorts())
    assert found.ports == ports
    assert found.s3_secret_key == created.s3_secret_key != "posttrain-local-secret"
    assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0  # the secret is private


def test_service_env_points_service_settings_at_the_stack(tmp_path, monkeypatch):
    stack = LocalStack(state_dir=tmp_path, ports=StackPorts.free())
    for key, value in stack.service_env().items():
        monkeypatch.setenv(key, value)
    settings = ServiceSettings(service_name="intake")
    assert settings.kafka.bootstrap_servers == stack.kafka_bootstrap
    assert settings.s3.endpoint == stack.s3_endpoint
    assert settings.s3.secret_key == stack.s3_secret_key
    assert settings.triton.grpc_url == stack.triton_grpc_url


def test_ports_from_environment_and_bad_values(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_STACK_PORT_KAFKA", "29092")
    assert StackPorts.from_env().kafka == 29092
    monkeypatch.setenv("POSTTRAIN_STACK_PORT_S3", "not-a-port")
    with pytest.raises(StackError, match="POSTTRAIN_STACK_PORT_S3"):
        StackPorts.from_env()
