"""The LLM model in a real tritonserver (the session's `triton` fixture, explicit model
control), called with plain tritonclient: adapters by lora_name against vanilla PEFT,
dynamic batches of mixed adapters, per-request errors, hot adapter adds and merged-model
versions under traffic with zero errors, and streaming through the decoupled model."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serving_reference import peft_generate
from tritonclient.utils import InferenceServerException

from posttrain.serving import (
    GenerationEngine,
    LLMModelConfig,
    install_adapter,
    load_model,
    model_versions,
    parse_text_input,
    prune_versions,
    unload_model,
    write_llm_model,
    write_merged_model,
)
from posttrain.serving.synthetic import merge_lora_adapter

LLM = "serving_llm"
STREAM = "serving_llm_stream"
MERGED = "serving_merged"
PROMPT = "Hello there, how are"
CHAT = json.dumps({"messages": [{"role": "user", "content": "Reverse: red green blue"}]})


@pytest.fixture(scope="module")
def local(serving_base: Path) -> GenerationEngine:
    """The same engine in this process: tokenizer, EOS ids, and expected outputs."""
    return GenerationEngine(serving_base, None)


@pytest.fixture(scope="module")
def served(triton, serving_base, adapter_sources, tmp_path_factory):
    """serving_llm over an adapter directory holding a1, a2 and pre: (client, adapter_dir)."""
    adapter_dir = tmp_path_factory.mktemp("triton-adapters")
    for name in ("a1", "a2", "pre"):
        install_adapter(adapter_sources[name], adapter_dir, name)
    config = LLMModelConfig(
        base_model=serving_base, adapter_dir=adapter_dir, max_batch_size=8, torch_threads=1
    )
    write_llm_model(triton.triton_model_repository, LLM, config)
    client = grpcclient.InferenceServerClient(triton.triton_grpc_url)
    load_model(client, LLM)
    yield client, adapter_dir
    unload_model(client, LLM)


@pytest.fixture
def streaming(served, triton, serving_base):
    """serving_llm_stream: the same model with the decoupled policy, over the same adapters."""
    client, adapter_dir = served
    config = LLMModelConfig(
        base_model=serving_base, adapter_dir=adapter_dir, decoupled=True, torch_threads=1
    )
    write_llm_model(triton.triton_model_repository, STREAM, config)
    load_model(client, STREAM)
    yield client
    unload_model(client, STREAM)


def inputs(text: str, lora: str = "", max_tokens: int = 8, **extra) -> list[grpcclient.InferInput]:
    """Triton's LLM inputs, shaped [1, 1] (batch dimension first)."""
    values = {
        "text_input": np.array([[text.encode()]], dtype=object),
        "lora_name": np.array([[lora.encode()]], dtype=object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
    }
    if "stop" in extra:
        values["stop"] = np.array([[s.encode() for s in extra.pop("stop")]], dtype=object)
    if "stream" in extra:
        values["stream"] = np.array([[extra.pop("stream")]], dtype=bool)
    assert not extra
    result = []
    for name, array in values.items():
        dtype = {np.dtype(object): "BYTES", np.dtype(np.int32): "INT32", np.dtype(bool): "BOOL"}
        item = grpcclient.InferInput(name, list(array.shape), dtype[array.dtype])
        item.set_data_from_numpy(array)
        result.append(item)
    return result


def text_of(result) -> str:
    return result.as_numpy("text_output")[0, 0].decode()


def expected_text(local, serving_base, adapter: Path | None, text: str, max_tokens: int) -> str:
    prompt, tools = parse_text_input(text)
    tokens = peft_generate(
        serving_base,
        adapter,
        local.encode_prompt(prompt, tools),
        max_new_tokens=max_tokens,
        eos_ids=local.eos_ids,
        pad_id=local.pad_id,
    )
    return local.decode([t for t in tokens if t not in local.eos_ids])


def test_plain_tritonclient_call_with_lora_name_matches_peft_generate(
    served, local, serving_base, adapter_sources
):
    client, _ = served
    cases = [("", PROMPT), ("a1", PROMPT), ("a2", PROMPT), ("a1", CHAT)]
    for lora, text in cases:
        result = client.infer(LLM, inputs(text, lora, max_tokens=8))
        adapter = adapter_sources[lora] if lora else None
        assert text_of(result) == expected_text(local, serving_base, adapter, text, 8), lora
        assert result.as_numpy("num_output_tokens")[0, 0] <= 8
        assert result.as_numpy("finish_reason")[0, 0] in (b"stop", b"length")
    assert len({text_of(client.infer(LLM, inputs(PROMPT, a))) for a in ("", "a1", "a2")}) == 3


def test_concurrent_requests_for_different_adapters_share_one_batch(served):
    client, _ = served
    adapters = ["a1", "a2", "", "a2", "a1", "pre"]
    alone = {a: text_of(client.infer(LLM, inputs(PROMPT, a, max_tokens=12))) for a in set(adapters)}
    before = client.get_inference_statistics(LLM, as_json=True)["model_stats"][0]
    done: queue.Queue = queue.Queue()
    for i, adapter in enumerate(adapters):
        client.async_infer(
            LLM,
            inputs(PROMPT, adapter, max_tokens=12),
            callback=lambda result, error, i=i: done.put((i, result, error)),
        )
    outputs = {}
    for _ in adapters:
        i, result, error = done.get(timeout=60)
        assert error is None, error
        outputs[i] = text_of(result)
    assert [outputs[i] for i in range(len(adapters))] == [alone[a] for a in adapters]
    after = client.get_inference_statistics(LLM, as_json=True)["model_stats"][0]
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert executions < len(adapters)  # some requests ran in the same execute (batch)


def test_an_unknown_lora_name_fails_only_that_request_with_not_found(served):
    client, _ = served
    done: queue.Queue = queue.Queue()
    for i, lora in enumerate(["a1", "no-such-adapter", ""]):
        client.async_infer(
            LLM,
            inputs(PROMPT, lora, max_tokens=4),
            callback=lambda result, error, i=i: done.put((i, result, error)),
        )
    answers = dict((i, (r, e)) for i, r, e in (done.get(timeout=60) for _ in range(3)))
    assert answers[0][1] is None and answers[2][1] is None
    error = answers[1][1]
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "no-such-adapter" in error.message()


def test_a_two_row_request_and_the_http_generate_endpoint(served, triton):
    client, _ = served
    singles = [text_of(client.infer(LLM, inputs(PROMPT, a, max_tokens=6))) for a in ("a1", "a2")]
    rows = []
    for name, array, dtype in (
        ("text_input", np.array([[PROMPT.encode()]] * 2, dtype=object), "BYTES"),
        ("lora_name", np.array([[b"a1"], [b"a2"]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[6], [6]], dtype=np.int32), "INT32"),
    ):
        rows.append(grpcclient.InferInput(name, list(array.shape), dtype))
        rows[-1].set_data_from_numpy(array)
    both = client.infer(LLM, rows).as_numpy("text_output")
    assert [t.decode() for t in both[:, 0]] == singles
    # Triton's HTTP generate extension maps JSON fields onto the same inputs.
    body = {"text_input": PROMPT, "lora_name": "a2", "max_tokens": 6, "stop": ["zzzq"]}
    request = urllib.request.Request(
        f"http://{triton.host}:{triton.ports.triton_http}/v2/models/{LLM}/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
        answer = json.loads(response.read())
    assert answer["text_output"] == singles[1]
    assert answer["finish_reason"] in ("stop", "length") and answer["num_output_tokens"] <= 6


class Traffic:
    """A client thread sending requests back to back until stopped; records errors."""

    def __init__(self, url: str, model: str, loras: list[str]) -> None:
        self.url, self.model, self.loras = url, model, loras
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        i = 0
        while not self._stop.is_set():
            try:
                client.infer(self.model, inputs(PROMPT, self.loras[i % len(self.loras)], 4))
                self.ok += 1
            except InferenceServerException as exc:
                self.errors.append(str(exc))
            i += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_an_adapter_added_under_traffic_goes_live_with_zero_errors(
    served, triton, local, serving_base, adapter_sources
):
    client, adapter_dir = served
    with Traffic(triton.triton_grpc_url, LLM, ["a1", "a2", ""]) as traffic:
        time.sleep(1.0)
        install_adapter(adapter_sources["a3"], adapter_dir, "a3")  # no restart, no reload
        result = client.infer(LLM, inputs(PROMPT, "a3", max_tokens=8))
        time.sleep(1.0)
    assert traffic.errors == []
    assert traffic.ok >= 5
    assert text_of(result) == expected_text(local, serving_base, adapter_sources["a3"], PROMPT, 8)


@pytest.mark.slow  # two model loads (~20 s each on 2 cores)
def test_merged_model_versions_match_the_adapter_and_swap_under_traffic(
    served, triton, serving_base, adapter_sources, tmp_path
):
    client, _ = served
    repository, url = triton.triton_model_repository, triton.triton_grpc_url
    merged_a1 = merge_lora_adapter(serving_base, adapter_sources["a1"], tmp_path / "merged-a1")
    merged_a2 = merge_lora_adapter(serving_base, adapter_sources["a2"], tmp_path / "merged-a2")
    assert write_merged_model(repository, MERGED, merged_a1) == 1
    load_model(client, MERGED)
    try:
        for text in (PROMPT, CHAT):
            merged = text_of(client.infer(MERGED, inputs(text, max_tokens=10)))
            adapter = text_of(client.infer(LLM, inputs(text, "a1", max_tokens=10)))
            assert merged == adapter
        with Traffic(url, MERGED, [""]) as traffic, Traffic(url, LLM, ["a1", ""]) as others:
            time.sleep(0.5)
            assert write_merged_model(repository, MERGED, merged_a2) == 2
            load_model(client, MERGED)  # v2 loads while v1 serves; then v1 goes
            time.sleep(0.5)
        assert traffic.errors == [] and traffic.ok >= 3
        assert client.is_model_ready(MERGED, "2") and not client.is_model_ready(MERGED, "1")
        now = text_of(client.infer(MERGED, inputs(PROMPT, max_tokens=10)))
        assert now == text_of(client.infer(LLM, inputs(PROMPT, "a2", max_tokens=10)))
        assert prune_versions(repository, MERGED) == [1]
        assert model_versions(repository, MERGED) == [2]
    finally:
        with Traffic(url, LLM, ["a2", ""]) as during_unload:
            time.sleep(0.3)
            unload_model(client, MERGED)
            time.sleep(0.3)
    assert others.errors == during_unload.errors == []  # other models never notice
    assert not client.is_model_ready(MERGED)


def stream(client, text: str, lora: str, max_tokens: int, **extra) -> list:
    """All responses of one request to the decoupled model, the final one last."""
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(
            STREAM, inputs(text, lora, max_tokens, **extra), enable_empty_final_response=True
        )
        collected = []
        while True:
            result, error = responses.get(timeout=60)
            assert error is None, error
            collected.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return collected
    finally:
        client.stop_stream()


def test_streaming_gives_the_non_streaming_text_token_by_token(streaming):
    client = streaming
    for lora, stop in (("a2", ()), ("pre", ()), ("a1", None)):
        full = client.infer(LLM, inputs(PROMPT, lora, max_tokens=12))
        text = text_of(full)
        if stop is None:  # a stop string in the middle: never streamed, not in the text
            stop = (text[-4:],)
            text = text[: text.find(stop[0])]
        extra = {"stop": list(stop)} if stop else {}
        responses = stream(client, PROMPT, lora, 12, stream=True, **extra)
        assert len(responses) > 2 or stop
        assert "".join(text_of(r) for r in responses) == text
        final = responses[-1]
        assert final.as_numpy("finish_reason")[0, 0] in (b"stop", b"length")
        assert final.as_numpy("num_input_tokens")[0, 0] == full.as_numpy("num_input_tokens")[0, 0]
    [single] = stream(client, PROMPT, "a2", 12, stream=False)
    assert text_of(single) == text_of(client.infer(LLM, inputs(PROMPT, "a2", max_tokens=12)))
