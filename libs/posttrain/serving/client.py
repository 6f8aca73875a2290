"""TritonLLM: a client of posttrain.serving's LLM models in Triton (KServe v2 gRPC, through
tritonclient), with Triton's errors turned into the statuses a caller should see. The
gateway serves its clients through it (posttrain.gateway.triton re-exports it); the
evaluator generates with it (posttrain.evaluation.TritonGenerator).

Inputs and outputs are those of posttrain.serving's Triton model (text_input, lora_name,
max_tokens, temperature, top_p, seed, stop, stream -> text_output, num_input_tokens,
num_output_tokens, finish_reason), one row per request.

  Triton unreachable             -> UNAVAILABLE (retry later)
  model or lora_name not served  -> UNAVAILABLE (the route points at something Triton
                                    does not serve now; the reconciler reloads it)
  client_timeout passed          -> DEADLINE_EXCEEDED
  Triton's INVALID_ARG           -> INVALID_ARGUMENT (e.g. prompt longer than the context)
  anything else                  -> INTERNAL, with Triton's message
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from posttrain.rpc.errors import InvalidArgument, ServiceError, Unavailable


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class TritonFailed(ServiceError):
    """Triton answered with an error that is neither the caller's nor a routing problem."""

    code = grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def build_inputs(
    text: str, lora_name: str, sampling: Sampling, *, stream: bool | None = None
) -> list[grpcclient.InferInput]:
    """The model's inputs for one request (shape [1, ...]: the batch dimension first)."""
    values: list[tuple[str, np.ndarray, str]] = [
        ("text_input", np.array([[text.encode()]], dtype=object), "BYTES"),
        ("lora_name", np.array([[lora_name.encode()]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[sampling.max_tokens]], dtype=np.int32), "INT32"),
        ("temperature", np.array([[sampling.temperature]], dtype=np.float32), "FP32"),
        ("top_p", np.array([[sampling.top_p]], dtype=np.float32), "FP32"),
    ]
    if sampling.seed is not None:
        values.append(("seed", np.array([[sampling.seed]], dtype=np.uint64), "UINT64"))
    if sampling.stop:
        stop = np.array([[s.encode() for s in sampling.stop]], dtype=object)
        values.append(("stop", stop, "BYTES"))
    if stream is not None:
        values.append(("stream", np.array([[stream]], dtype=bool), "BOOL"))
    inputs = []
    for name, array, dtype in values:
        item = grpcclient.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def _completion(result: grpcclient.InferResult) -> Completion:
    def first(name: str):
        array = result.as_numpy(name)
        return array.reshape(-1)[0]

    text = first("text_output")
    reason = first("finish_reason")
    return Completion(
        text=text.decode() if isinstance(text, bytes) else str(text),
        prompt_tokens=int(first("num_input_tokens")),
        completion_tokens=int(first("num_output_tokens")),
        finish_reason=reason.decode() if isinstance(reason, bytes) else str(reason),
    )


def map_triton_error(exc: InferenceServerException, url: str, model: str, lora: str) -> Exception:
    """The ServiceError a caller (the gateway's client, the evaluator) should get for a
    Triton failure."""
    status = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    target = f"{model}/{lora}" if lora else model
    if status == "DEADLINE_EXCEEDED" or "Deadline Exceeded" in message:
        return DeadlineExceeded(f"Triton did not answer within the deadline ({target})")
    if status == "UNAVAILABLE" and "connect" in message:
        return Unavailable(f"Triton at {url} is unreachable: {message}")
    if status in ("NOT_FOUND", "UNAVAILABLE"):
        return Unavailable(f"Triton does not serve {target} right now: {message}")
    if status in ("INVALID_ARGUMENT", "INVALID_ARG"):
        return InvalidArgument("input", f"the model refused the request: {message}")
    return TritonFailed(f"Triton failed on {target}: {status or 'error'}: {message}")


class TritonLLM:
    """One channel to Triton, shared by all threads (unary calls are thread-safe); each
    stream gets a client of its own (tritonclient allows one stream per client)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = grpcclient.InferenceServerClient(url)

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        return self._client

    def generate(
        self,
        model: str,
        text: str,
        lora_name: str,
        sampling: Sampling,
        *,
        timeout_s: float | None = None,
    ) -> Completion:
        try:
            result = self._client.infer(
                model, build_inputs(text, lora_name, sampling), client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            raise map_triton_error(exc, self.url, model, lora_name) from exc
        return _completion(result)

    def stream(
        self,
        model: str,
        text: str,
        lora_name: str,
        sampling: Sampling,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[tuple[str, Completion | None]]:
        """(text delta, None) as the decoupled `model` produces text, then ("", the final
        Completion with the whole text). Closing the iterator cancels the request."""
        client = grpcclient.InferenceServerClient(self.url)
        responses: queue.Queue = queue.Queue()
        pieces: list[str] = []
        last: Completion | None = None
        try:
            client.start_stream(
                callback=lambda result, error: responses.put((result, error)),
                stream_timeout=timeout_s,
            )
            client.async_stream_infer(
                model,
                build_inputs(text, lora_name, sampling, stream=True),
                enable_empty_final_response=True,
            )
            while True:
                try:
                    result, error = responses.get(timeout=(timeout_s or 600.0) + 1.0)
                except queue.Empty:
                    raise DeadlineExceeded(
                        f"Triton stream of {model} gave nothing within the deadline"
                    ) from None
                if error is not None:
                    raise map_triton_error(error, self.url, model, lora_name)
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                if response.outputs:
                    piece = _completion(result)
                    if piece.text:
                        pieces.append(piece.text)
                        yield piece.text, None
                    last = piece
                if final:
                    counts = last or Completion("", 0, 0, "stop")
                    yield (
                        "",
                        Completion(
                            "".join(pieces),
                            counts.prompt_tokens,
                            counts.completion_tokens,
                            counts.finish_reason,
                        ),
                    )
                    return
        except InferenceServerException as exc:
            raise map_triton_error(exc, self.url, model, lora_name) from exc
        finally:
            try:
                client.stop_stream(cancel_requests=True)
            finally:
                client.close()

    def is_ready(self, model: str, *, timeout_s: float = 5.0) -> bool:
        """Whether Triton serves `model` now; Unavailable when Triton does not answer."""
        try:
            return bool(self._client.is_model_ready(model, client_timeout=timeout_s))
        except InferenceServerException as exc:
            raise map_triton_error(exc, self.url, model, "") from exc

    def close(self) -> None:
        self._client.close()
