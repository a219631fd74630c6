"""Shared pytest configuration: the real control-plane fixtures (tests/cluster/fixtures.py)."""
pytest_plugins = ["tests.cluster.fixtures"]
