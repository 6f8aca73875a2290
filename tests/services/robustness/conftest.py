"""The fleet fixture (every service in one server): see robustness_helpers."""

from robustness_helpers import fleet  # noqa: F401 - a fixture, registered by import
