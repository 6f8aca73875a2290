"""sha256 of what streams through: local files, and upload streams on the way to S3.

Owns HashingReader and sha256_file. Must never hold more than one read's worth of data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a local file, read in chunks."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return digest.hexdigest(), f.tell()


class HashingReader:
    """A read()-able view of a binary stream or an iterable of bytes chunks (e.g. a gRPC
    upload) that hashes and counts every byte read.

    read(n) returns exactly n bytes unless the source ends: minio's part reader appends
    each read to a bytes object, so many small reads would copy a part over and over.
    """

    def __init__(self, source: BinaryIO | Iterable[bytes]) -> None:
        self._read_raw = getattr(source, "read", None)
        self._chunks: Iterator[bytes] | None = None
        if self._read_raw is None:
            if isinstance(source, bytes | bytearray | memoryview | str):
                raise TypeError("HashingReader takes a stream or an iterable of chunks, not data")
            self._chunks = iter(source)
        self._pending = memoryview(b"")
        self._hash = hashlib.sha256()
        self._ended = False
        self.bytes_read = 0
        # What the source raised, if anything: the caller's error, to be re-raised as is.
        self.source_error: BaseException | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _read_some(self, limit: int) -> bytes:
        try:
            return self._read_from_source(limit)
        except BaseException as exc:
            self.source_error = exc
            raise

    def _read_from_source(self, limit: int) -> bytes:
        if self._read_raw is not None:
            data = self._read_raw(limit)
            if data is not None and not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"the source stream's read() returned {type(data).__name__}")
            return bytes(data or b"")
        while not self._pending:
            chunk = next(self._chunks, None)  # type: ignore[arg-type]
            if chunk is None:
                return b""
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"the source iterable yielded {type(chunk).__name__}, not bytes")
            self._pending = memoryview(chunk)
        piece = bytes(self._pending[:limit])
        self._pending = self._pending[limit:]
        return piece

    def read(self, size: int = -1) -> bytes:
        if self._ended or size == 0:
            return b""
        first = self._read_some(1 << 20 if size < 0 else size)
        if not first or len(first) == size:
            # The usual case for files: one read filled the request; pass it on uncopied.
            self._ended = not first
            self._hash.update(first)
            self.bytes_read += len(first)
            return first
        buffer = bytearray(first)
        while not self._ended and (size < 0 or len(buffer) < size):
            piece = self._read_some(1 << 20 if size < 0 else size - len(buffer))
            if not piece:
                self._ended = True
                break
            buffer += piece
        self._hash.update(buffer)
        self.bytes_read += len(buffer)
        return bytes(buffer)
