"""Manifest: the list of files of a folder artifact (relative path, sha256, size).

Owns the manifest's JSON form. The form is canonical (sorted, no whitespace), so the
same folder always gives the same bytes and the sha256 of those bytes is the artifact id.
Must never talk to S3 or read files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from posttrain.storage.errors import ManifestInvalid
from posttrain.storage.keys import check_relative_name, check_sha256

MANIFEST_SCHEMA = "posttrain.artifact-manifest/v1"


@dataclass(frozen=True)
class ManifestEntry:
    """One file: where it goes in the folder and what its content hashes to."""

    path: str
    sha256: str
    size_bytes: int

    def __post_init__(self) -> None:
        check_relative_name(self.path, "manifest path")
        check_sha256(self.sha256, f"sha256 of {self.path!r}")
        if not isinstance(self.size_bytes, int) or self.size_bytes < 0:
            raise ValueError(f"size_bytes of {self.path!r} must be an int >= 0")


@dataclass(frozen=True, init=False)
class Manifest:
    """The files of one artifact plus free-form string metadata (e.g. base model, job id).
    Keep metadata deterministic: a timestamp in it makes identical folders differ."""

    files: tuple[ManifestEntry, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __init__(self, files: Iterable[ManifestEntry], metadata: Mapping[str, str] | None = None):
        entries = tuple(sorted(files, key=lambda e: e.path))
        seen: set[str] = set()
        prefixes: set[str] = set()
        for entry in entries:
            if entry.path in seen:
                raise ValueError(f"manifest path {entry.path!r} is listed twice")
            seen.add(entry.path)
            parts = entry.path.split("/")
            prefixes.update("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = seen & prefixes
        if clash:
            raise ValueError(f"manifest path {sorted(clash)[0]!r} is both a file and a folder")
        meta = dict(metadata or {})
        for key, value in meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"manifest metadata must map str to str, got {key!r}: {value!r}")
        object.__setattr__(self, "files", entries)
        object.__setattr__(self, "metadata", meta)

    @property
    def total_size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.files)

    def to_json_bytes(self) -> bytes:
        document = {
            "schema": MANIFEST_SCHEMA,
            "files": [
                {"path": e.path, "sha256": e.sha256, "size_bytes": e.size_bytes} for e in self.files
            ],
            "metadata": self.metadata,
        }
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json_bytes()).hexdigest()

    @classmethod
    def from_json_bytes(cls, data: bytes, source: str) -> Manifest:
        """Parse a manifest read from `source` (a URI, for the error message). Paths are
        checked again here: a manifest from the server is input, and its paths become
        local file paths on download."""
        try:
            document = json.loads(data)
            if document.get("schema") != MANIFEST_SCHEMA:
                raise ValueError(f"schema is {document.get('schema')!r}, not {MANIFEST_SCHEMA!r}")
            files = [
                ManifestEntry(path=f["path"], sha256=f["sha256"], size_bytes=f["size_bytes"])
                for f in document["files"]
            ]
            return cls(files, document.get("metadata") or {})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestInvalid(f"{source} is not a valid artifact manifest: {exc}") from exc
