"""Test support: the pytest plugin (services for tests), helpers to read topics, process checks, and
the one condition wait of the suite (`waiting.wait_until`)."""
