"""Helpers shared by the tests, one module per domain (import as `from tests.helpers import x`).

Test folders mirror the package (tests/models for deeplab_jax/models, ...); anything two test
modules need lives here, never in a package `__init__`, a conftest or a local copy.
"""
