"""Errors of one serving request. Each carries the Triton error code it maps to, so the
Python-backend model answers the request that caused it and no other."""

from __future__ import annotations


class ServingError(Exception):
    """A request that cannot be served; `code` is a Triton error code name."""

    code = "INTERNAL"


class InvalidRequest(ServingError):
    """Bad input: an empty or too long prompt, an out-of-range sampling setting."""

    code = "INVALID_ARG"


class AdapterNotFound(ServingError):
    """No adapter folder of that name under the adapter directory."""

    code = "NOT_FOUND"


class AdapterLoadError(ServingError):
    """The adapter folder exists but cannot be served (unreadable, or a kind or
    feature this runtime does not support); the message says which."""

    code = "UNSUPPORTED"
