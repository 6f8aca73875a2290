"""Intake end to end in the library: validation + normalisation + storage of a 100k-row
chat JSONL, against validation alone in the same run (the ratio is the cost of storage).

    python benchmarks/bench_intake.py [--rows 100000]

Uses POSTTRAIN_S3_* if POSTTRAIN_S3_ENDPOINT is set, else starts SeaweedFS on free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from posttrain.config import S3Settings
from posttrain.data import IntakeConfig, validate_upload
from posttrain.data.config import DataFormat, RowSchema
from posttrain.intake import DatasetCatalog, UploadSpec
from posttrain.stack import LocalStack, StackPorts
from posttrain.storage import ArtifactStore


def make_file(path: Path, rows: int) -> int:
    with open(path, "wb") as out:
        for i in range(rows):
            row = {
                "messages": [
                    {"role": "system", "content": "You are the Acme support assistant."},
                    {
                        "role": "user",
                        "content": f"Ticket {i}: my router {i % 97} drops Wi-Fi at night.",
                    },
                    {
                        "role": "assistant",
                        "content": f"ANSWER: reset the router {i % 97} channel to auto | REF-{i:06d}",
                    },
                ]
            }
            out.write(json.dumps(row).encode() + b"\n")
    return path.stat().st_size


def chunks(path: Path, size: int = 1 << 20):
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = None
        if os.environ.get("POSTTRAIN_S3_ENDPOINT"):
            settings = S3Settings()
        else:
            stack = LocalStack(state_dir=Path(tmp) / "stack", ports=StackPorts.free())
            stack.up(["s3"])
            settings = stack.s3_settings(bucket=f"bench-{uuid.uuid4().hex[:8]}")
        try:
            data = Path(tmp) / "chat.jsonl"
            size = make_file(data, args.rows)
            mb = size / 1e6

            start = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                result = validate_upload(chunks(data), IntakeConfig(), sink)
            validate_s = time.perf_counter() - start
            assert result.accepted, result.errors[:3]

            store = ArtifactStore.from_settings(settings)
            store.ensure_bucket()
            catalog = DatasetCatalog(store, spool_dir=tmp)
            spec = UploadSpec(
                tenant="bench", dataset="chat", format=DataFormat.JSONL, schema=RowSchema.CHAT
            )
            start = time.perf_counter()
            prepared = catalog.prepare(spec, chunks(data))
            full_s = time.perf_counter() - start
        finally:
            if stack:
                stack.down()
    print(f"{args.rows} rows, {mb:.1f} MB chat JSONL; stored {prepared.result.rows_stored} rows")
    print(f"{'path':<34}{'rows/s':>10}{'MB/s':>8}{'s':>8}")
    print(
        f"{'validate only (library)':<34}{args.rows / validate_s:>10.0f}{mb / validate_s:>8.1f}{validate_s:>8.1f}"
    )
    print(
        f"{'validate + split + store (intake)':<34}{args.rows / full_s:>10.0f}{mb / full_s:>8.1f}{full_s:>8.1f}"
    )
    print(f"ratio intake/validate-only throughput: {validate_s / full_s:.2f}x")


if __name__ == "__main__":
    main()
