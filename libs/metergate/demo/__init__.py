"""The demo of the main job: a sample catalog, a usage mix, and the orchestration of `metergate demo`."""
