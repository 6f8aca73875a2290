"""Throughput of dataset intake validation + normalisation (library only, no services).

Generates a chat JSONL upload (default 100k rows, with tool calls, system prompts and a
few exact duplicates) in a temporary file, then times validate_upload writing the
normalised rows to a temporary sink, with and without near-duplicate detection, and the
second pass (write_split). Prints rows/s and MB/s of upload bytes, and peak traced memory.

    python benchmarks/bench_intake_validation.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import tracemalloc

from posttrain.data import IntakeConfig, validate_upload, write_split

WORDS = (
    "the model should answer questions about invoices refunds shipping accounts policy "
    "customer order status delivery warranty return label payment card billing address "
    "please explain how why when where which step first then finally because however"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n)).capitalize() + "."


def make_row(rng: random.Random, i: int) -> dict:
    messages = []
    if i % 3 == 0:
        messages.append({"role": "system", "content": "You are a helpful support assistant."})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": _sentence(rng, rng.randint(8, 40))})
        if i % 10 == 0:
            call_id = f"call_{i}_{len(messages)}"
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": "lookup_order",
                                "arguments": json.dumps({"order_id": i}),
                            },
                        }
                    ],
                }
            )
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": '{"status": "shipped"}'}
            )
        messages.append(
            {
                "role": "assistant",
                "content": " ".join(_sentence(rng, 20) for _ in range(rng.randint(1, 6))),
            }
        )
    return {"messages": messages, "id": i}


def generate(path: str, rows: int) -> int:
    rng = random.Random(1234)
    with open(path, "wb") as f:
        previous = b""
        for i in range(rows):
            line = previous if i % 200 == 199 else json.dumps(make_row(rng, i)).encode() + b"\n"
            f.write(line)
            previous = line
    return os.path.getsize(path)


def peak_traced_mb(path: str, config: IntakeConfig) -> float:
    """A separate run under tracemalloc (which slows Python down, so not timed)."""
    with open(path, "rb") as source, tempfile.TemporaryFile() as sink:
        tracemalloc.start()
        validate_upload(source, config, sink)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 1e6


def run(path: str, size: int, config: IntakeConfig, label: str) -> None:
    with open(path, "rb") as source, tempfile.TemporaryFile() as sink:
        start = time.perf_counter()
        result = validate_upload(source, config, sink)
        elapsed = time.perf_counter() - start
        sink.seek(0)
        with tempfile.TemporaryFile() as train, tempfile.TemporaryFile() as evals:
            start = time.perf_counter()
            write_split(sink, result.split, train, evals, skip=result.near_duplicate_digests)
            split_s = time.perf_counter() - start
    assert result.accepted, result.errors[:3]
    print(
        f"{label:<28} {result.rows_total / elapsed:>9,.0f} rows/s {size / elapsed / 1e6:>7.1f} MB/s"
        f"  ({elapsed:.1f} s; stored {result.rows_stored:,},"
        f" exact dups {result.exact_duplicates}, near dups {result.near_duplicates};"
        f" write_split {split_s:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "upload.jsonl")
        size = generate(path, args.rows)
        print(f"upload: {args.rows:,} chat rows, {size / 1e6:.1f} MB")
        run(
            path,
            size,
            IntakeConfig(format="jsonl", schema="chat", near_dup_threshold=None),
            "validate (no near-dup)",
        )
        run(path, size, IntakeConfig(format="jsonl", schema="chat"), "validate (near-dup 0.9)")
        peak = peak_traced_mb(path, IntakeConfig(format="jsonl", schema="chat"))
        print(
            f"peak traced Python memory (near-dup on): {peak:.0f} MB for a {size / 1e6:.0f} MB upload"
        )


if __name__ == "__main__":
    main()
