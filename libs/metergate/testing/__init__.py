"""Test support: the pytest plugin (services for tests) and helpers to read topics."""
