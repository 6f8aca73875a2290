"""Triton Python-backend model over GenerationEngine: the multi-adapter LLM, and merged
models (the same file with no adapter_dir). repository.py copies this file into a model
repository as <model>/<version>/model.py; the stub imports posttrain from the venv.

Inputs (Triton's LLM conventions; the first dimension is the batch, max_batch_size > 0):
  text_input   BYTES  [1]   raw text, or a JSON chat {"messages": [...], "tools"?: [...]}
  lora_name    BYTES  [1]   optional: adapter folder under adapter_dir; empty = base model
  max_tokens   INT32  [1]   optional: default from the parameter default_max_tokens
  temperature  FP32   [1]   optional: 0 = greedy (the default)
  top_p        FP32   [1]   optional: default 1
  seed         UINT64 [1]   optional: sampled rows are reproducible with it
  stop         BYTES  [-1]  optional: stop strings (not part of the text returned)
  stream       BOOL   [1]   optional, decoupled models only: text deltas as they come
Outputs: text_output BYTES [1] (streamed: the new text of each response), num_input_tokens
and num_output_tokens UINT32 [1] (streamed: counts so far), finish_reason BYTES [1]
("stop", "length", "cancelled"; empty on the non-final streamed responses).
Parameters (config.pbtxt, all strings): base_model (folder; a relative path is taken
inside the version folder), adapter_dir, adapter_cache_size, default_max_tokens,
max_context_tokens, dtype, device, torch_threads.

All requests of one execute() run as one batched generation; a request's own error
(unknown lora_name, bad setting) is answered to it alone.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from posttrain.serving.engine import (
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    parse_text_input,
)
from posttrain.serving.errors import InvalidRequest, ServingError

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _triton_error(exc: Exception) -> pb_utils.TritonError:
    code = getattr(pb_utils.TritonError, getattr(exc, "code", "INTERNAL"), None)
    message = str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _rows(request, name: str, count: int) -> list[np.ndarray] | None:
    """Per batch row, the input's values as a 1-D array (Triton has already checked that
    every input has the batch size of text_input)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    array = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    if array.shape[0] != count:
        raise InvalidRequest(f"{name} has {array.shape[0]} rows, text_input has {count}")
    return list(array)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _first(rows: list[np.ndarray] | None, i: int, default):
    if rows is None or rows[i].size == 0:
        return default
    return rows[i][0].item() if hasattr(rows[i][0], "item") else rows[i][0]


def parse_request(request, cancelled=None) -> tuple[list[GenerationRequest], bool]:
    """The request's rows as GenerationRequests, and whether it asks to stream."""
    tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
    if tensor is None:
        raise InvalidRequest("text_input is required")
    shape = tensor.as_numpy().shape
    count = shape[0] if len(shape) > 1 else 1
    texts = _rows(request, "text_input", count)
    lora = _rows(request, "lora_name", count)
    max_tokens = _rows(request, "max_tokens", count)
    temperature = _rows(request, "temperature", count)
    top_p = _rows(request, "top_p", count)
    seed = _rows(request, "seed", count)
    stop = _rows(request, "stop", count)
    stream = _rows(request, "stream", count)
    rows = []
    for i in range(count):
        try:
            prompt, tools = parse_text_input(_text(texts[i][0]))
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"text_input is not UTF-8: {exc}") from exc
        seed_value = _first(seed, i, None)
        params = SamplingParams(
            max_tokens=_first(max_tokens, i, None),
            temperature=float(_first(temperature, i, 0.0)),
            top_p=float(_first(top_p, i, 1.0)),
            seed=None if seed_value is None else int(seed_value),
            stop=tuple(s for s in (_text(v) for v in stop[i]) if s) if stop else (),
        )
        rows.append(
            GenerationRequest(
                prompt=prompt,
                adapter=_text(_first(lora, i, b"")).strip(),
                params=params,
                tools=tools,
                is_cancelled=cancelled,
            )
        )
    return rows, bool(_first(stream, 0, False))


def _column(values: list, dtype) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(-1, 1)


def _response(results: list[GenerationResult], texts: list[str] | None = None):
    """One response for these rows; `texts` replaces the results' text (stream deltas)."""
    texts = [r.text for r in results] if texts is None else texts
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("text_output", _column([t.encode() for t in texts], np.object_)),
            pb_utils.Tensor(
                "num_input_tokens", _column([r.num_input_tokens for r in results], np.uint32)
            ),
            pb_utils.Tensor(
                "num_output_tokens", _column([r.num_output_tokens for r in results], np.uint32)
            ),
            pb_utils.Tensor(
                "finish_reason", _column([r.finish_reason.encode() for r in results], np.object_)
            ),
        ]
    )


class TritonPythonModel:
    def initialize(self, args):
        import torch

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        base = Path(params["base_model"])
        if not base.is_absolute():
            base = Path(args["model_repository"]) / args["model_version"] / base
        threads = int(params.get("torch_threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.engine = GenerationEngine(
            base,
            params.get("adapter_dir") or None,
            adapter_cache_size=int(params.get("adapter_cache_size") or 8),
            dtype=params.get("dtype") or "auto",
            device=params.get("device") or "auto",
            default_max_tokens=int(params.get("default_max_tokens") or 64),
            max_context_tokens=int(params.get("max_context_tokens") or 0) or None,
        )
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: base {base}, adapters "
            f"{params.get('adapter_dir') or '(none)'}, decoupled={self.decoupled}"
        )

    def execute(self, requests):
        if self.decoupled:
            self._execute_decoupled(requests)
            return None
        return self._execute(requests)

    def _parse_all(self, requests, senders=None):
        """Per request: (its rows, stream flag) or the error that answers it."""
        parsed = []
        for n, request in enumerate(requests):
            sender = senders[n] if senders else None
            cancelled = getattr(sender if sender is not None else request, "is_cancelled", None)
            try:
                parsed.append(parse_request(request, cancelled))
            except ServingError as exc:
                parsed.append(exc)
            except Exception as exc:  # noqa: BLE001 - a malformed request fails alone
                parsed.append(InvalidRequest(f"cannot read request: {exc}"))
        return parsed

    def _execute(self, requests):
        parsed = self._parse_all(requests)
        flat, owners = [], []
        for n, item in enumerate(parsed):
            if isinstance(item, Exception):
                continue
            rows, stream = item
            if stream:
                parsed[n] = InvalidRequest("stream=true needs the decoupled (streaming) model")
                continue
            flat += rows
            owners += [n] * len(rows)
        try:
            outcomes = self.engine.generate(flat)
        except Exception as exc:  # noqa: BLE001 - answer every request, keep serving
            pb_utils.Logger.log_error(traceback.format_exc())
            outcomes = [exc] * len(flat)
        responses = []
        for n, item in enumerate(parsed):
            if isinstance(item, Exception):
                responses.append(pb_utils.InferenceResponse(error=_triton_error(item)))
                continue
            mine = [o for o, owner in zip(outcomes, owners, strict=True) if owner == n]
            failed = next((o for o in mine if isinstance(o, Exception)), None)
            if failed is not None:
                responses.append(pb_utils.InferenceResponse(error=_triton_error(failed)))
            else:
                responses.append(_response(mine))
        return responses

    def _execute_decoupled(self, requests):
        senders = [request.get_response_sender() for request in requests]
        parsed = self._parse_all(requests, senders)
        flat, owners = [], []
        for n, item in enumerate(parsed):
            if isinstance(item, Exception):
                senders[n].send(pb_utils.InferenceResponse(error=_triton_error(item)), flags=FINAL)
                continue
            rows, stream = item
            if stream and len(rows) != 1:
                error = InvalidRequest("stream=true takes one text_input per request")
                senders[n].send(pb_utils.InferenceResponse(error=_triton_error(error)), flags=FINAL)
                parsed[n] = error
                continue
            flat += rows
            owners += [n] * len(rows)
        streaming = {
            n for n, item in enumerate(parsed) if not isinstance(item, Exception) and item[1]
        }
        answered: set[int] = set()  # requests whose final response went out

        def on_update(row: int, delta: str, progress: GenerationResult, final: bool) -> None:
            n = owners[row]
            if n not in streaming:
                return
            senders[n].send(_response([progress], [delta]), flags=FINAL if final else 0)
            if final:
                answered.add(n)

        try:
            outcomes = self.engine.generate(flat, on_update)
        except Exception as exc:  # noqa: BLE001 - answer every request, keep serving
            pb_utils.Logger.log_error(traceback.format_exc())
            outcomes = [exc] * len(flat)
        for n, item in enumerate(parsed):
            if isinstance(item, Exception) or n in answered:
                continue
            mine = [o for o, owner in zip(outcomes, owners, strict=True) if owner == n]
            failed = next((o for o in mine if isinstance(o, Exception)), None)
            if failed is not None:
                senders[n].send(
                    pb_utils.InferenceResponse(error=_triton_error(failed)), flags=FINAL
                )
            else:
                senders[n].send(_response(mine), flags=FINAL)

    def finalize(self):
        self.engine = None
