"""Fixtures of the console tests: see console_helpers (a module of its own so that its
name cannot collide with another folder's conftest)."""

from console_helpers import browser, fleet  # noqa: F401 - fixtures, registered by import
