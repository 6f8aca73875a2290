"""Object key rules and the bucket layout of the artifact store.

Owns the layout (under the store's optional root prefix):
  blobs/sha256/<hex>       content-addressed file contents and manifests
  staging/<time>-<uuid>    streams being uploaded before their hash is known
  <name>/manifest.json     a published (named) artifact; written last, so it is the commit
and the checks that a caller's name, prefix or manifest path stays inside its prefix.
Must never touch the network or the local filesystem.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

BLOB_PREFIX = "blobs/sha256/"
STAGING_PREFIX = "staging/"
MANIFEST_FILENAME = "manifest.json"
# Names may not start with these: a name there could shadow or be shadowed by store internals.
RESERVED_FIRST_SEGMENTS = frozenset({"blobs", "staging"})
MAX_KEY_BYTES = 1024  # the S3 limit for a whole key

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _name_problem(value: str) -> str | None:
    """Why `value` is not a safe relative object name, or None when it is."""
    if not value:
        return "it is empty"
    if value.startswith("/"):
        return "it starts with '/' (names are relative to the store's prefix)"
    if "\\" in value:
        return "it contains a backslash"
    for char in value:
        if unicodedata.category(char) == "Cc":
            return f"it contains the control character {char!r}"
    segments = value.split("/")
    if "" in segments:
        return "it has an empty path segment ('//' or a trailing '/')"
    if "." in segments or ".." in segments:
        return "it has a '.' or '..' path segment"
    # What a proxy, a file-backed server or a later tool might turn into '/', '.' or
    # '..': refused here rather than trusted to stay literal everywhere downstream.
    for segment in segments:
        for form, how in (
            (unicodedata.normalize("NFKC", segment), "unicode-normalised"),
            (unquote(segment), "url-decoded"),
        ):
            if form in (".", "..") or "/" in form or "\\" in form:
                return f"the segment {segment!r} is {form!r} once {how}"
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        return f"it is longer than {MAX_KEY_BYTES} bytes"
    return None


def check_relative_name(value: str, argument: str) -> str:
    """Return `value` if it is a safe relative name ('a/b/c.json'); else ValueError naming
    `argument`. Used for artifact names, manifest paths and keys parsed from URIs."""
    if not isinstance(value, str):
        raise ValueError(f"{argument} must be a str, got {type(value).__name__}")
    problem = _name_problem(value)
    if problem:
        raise ValueError(f"{argument}={value!r} is not allowed: {problem}")
    return value


def check_segment(value: str, argument: str) -> str:
    """Return `value` if it is one safe path segment (a tenant, a dataset name): a
    relative name without '/'; else ValueError naming `argument`."""
    check_relative_name(value, argument)
    if "/" in value:
        raise ValueError(f"{argument}={value!r} is not allowed: it contains '/'")
    return value


def check_prefix(value: str, argument: str) -> str:
    """Return a key prefix unchanged if it is '' or a safe relative name, optionally
    ending in '/' ('datasets/' or 'datasets/sup'); else ValueError naming `argument`."""
    if not isinstance(value, str):
        raise ValueError(f"{argument} must be a str, got {type(value).__name__}")
    if value:
        check_relative_name(value.removesuffix("/"), argument)
    return value


def check_artifact_name(name: str, argument: str = "name") -> str:
    """A name to publish under, e.g. 'datasets/support-chats/3' or 'models/llama-lora/7'."""
    check_relative_name(name, argument)
    segments = name.split("/")
    if segments[0] in RESERVED_FIRST_SEGMENTS:
        raise ValueError(
            f"{argument}={name!r} is not allowed: '{segments[0]}/' is reserved for the store's "
            f"own objects (reserved: {sorted(RESERVED_FIRST_SEGMENTS)})"
        )
    if MANIFEST_FILENAME in segments:
        # '<a>/manifest.json' is the object of name 'a': a name containing it would nest
        # one artifact's key inside another's, which file-backed S3 servers can't store.
        raise ValueError(f"{argument}={name!r} is not allowed: '{MANIFEST_FILENAME}' is reserved")
    return name


def check_sha256(value: str, argument: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"{argument}={value!r} is not a sha256 (64 lowercase hex digits)")
    return value


def blob_key(sha256: str) -> str:
    return BLOB_PREFIX + check_sha256(sha256)


def manifest_key(name: str) -> str:
    return f"{check_artifact_name(name)}/{MANIFEST_FILENAME}"
