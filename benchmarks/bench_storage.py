"""Throughput of ArtifactStore against the raw minio client, in the same run.

    python benchmarks/bench_storage.py [--size-mb 64] [--repeat 3]

Uses the S3 endpoint in POSTTRAIN_S3_* when POSTTRAIN_S3_ENDPOINT is set; otherwise starts
SeaweedFS through the local stack manager (posttrain.stack) on free ports in a temporary
folder and stops it afterwards. Works in a bucket of its own, removed at the end.

Per direction it prints MB/s (median of --repeat runs) and store/raw ratios:
  put: ArtifactStore.put_file (hash, then upload verified) and put_stream (staging upload
       + server-side copy) versus minio fput_object, same part size and parallelism;
       plus put_file of content already stored (deduplicated: one HEAD, no upload).
  get: ArtifactStore.download_file (verified, temp file + rename) versus fget_object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from minio.deleteobjects import DeleteObject

from posttrain.config import S3Settings
from posttrain.storage import ArtifactStore
from posttrain.storage.store import DEFAULT_PART_SIZE

MiB = 1024 * 1024
RAW_PUT = "put  raw minio fput_object"
RAW_GET = "get  raw minio fget_object"


@contextmanager
def s3_endpoint(workdir: Path) -> Iterator[S3Settings]:
    if os.environ.get("POSTTRAIN_S3_ENDPOINT"):
        yield S3Settings()
        return
    from posttrain.stack import LocalStack, StackPorts

    stack = LocalStack(state_dir=workdir / "stack", ports=StackPorts.free())
    stack.up(["s3"])
    try:
        yield stack.s3_settings()
    finally:
        stack.down(["s3"])


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


def make_unique(path: Path, run: int) -> None:
    """Change the first bytes so each run is new content (the store would skip a re-upload)."""
    with open(path, "r+b") as f:
        f.write(f"run-{run:06d}-{uuid.uuid4().hex}".encode())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=64, help="size of the test file (MiB)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the median is shown"
    )
    args = parser.parse_args()
    size = args.size_mb * MiB

    with (
        tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp,
        s3_endpoint(Path(tmp)) as settings,
    ):
        workdir = Path(tmp)
        bucket = f"bench-storage-{uuid.uuid4().hex[:8]}"
        store = ArtifactStore.from_settings(settings.model_copy(update={"bucket": bucket}))
        store.ensure_bucket()
        raw = store.client
        source = workdir / "source.bin"
        write_random_file(source, size)
        seconds: dict[str, list[float]] = {}

        def measure(label: str, action: Callable[..., object], *args: object) -> object:
            started = time.perf_counter()
            result = action(*args)
            seconds.setdefault(label, []).append(time.perf_counter() - started)
            return result

        def put_stream_from(path: Path) -> None:
            with open(path, "rb") as f:
                store.put_stream(f)

        try:
            # Warm-up: the first write to a new SeaweedFS bucket allocates its volumes.
            store.put_bytes(b"warm-up")
            for run in range(args.repeat):
                make_unique(source, run)
                raw_key = f"raw/{run}"
                raw_put = partial(raw.fput_object, part_size=DEFAULT_PART_SIZE)
                measure(RAW_PUT, raw_put, bucket, raw_key, str(source))
                ref = measure("put  ArtifactStore.put_file", store.put_file, source)
                measure("put  ArtifactStore.put_file (already stored)", store.put_file, source)
                make_unique(source, run + 1000)
                measure("put  ArtifactStore.put_stream", put_stream_from, source)

                raw_dest, store_dest = workdir / f"raw-{run}.bin", workdir / f"store-{run}.bin"
                measure(RAW_GET, raw.fget_object, bucket, raw_key, str(raw_dest))
                measure("get  ArtifactStore.download_file", store.download_file, ref, store_dest)
                raw_dest.unlink()
                store_dest.unlink()
        finally:
            leftovers = [
                DeleteObject(o.object_name) for o in raw.list_objects(bucket, recursive=True)
            ]
            list(raw.remove_objects(bucket, leftovers))
            raw.remove_bucket(bucket)

        print(
            f"\nS3 endpoint {store.endpoint_url}, object {args.size_mb} MiB, part size "
            f"{DEFAULT_PART_SIZE // MiB} MiB, median of {args.repeat} runs"
        )
        rates = {label: size / MiB / statistics.median(times) for label, times in seconds.items()}
        for label, rate in rates.items():
            print(f"  {label:<46} {rate:9.1f} MiB/s")
        print("ratios (ArtifactStore / raw minio):")
        for label, rate in rates.items():
            if "ArtifactStore" in label:
                raw_label = RAW_PUT if label.startswith("put") else RAW_GET
                print(f"  {label:<46} {rate / rates[raw_label]:9.2f}x")


if __name__ == "__main__":
    main()
