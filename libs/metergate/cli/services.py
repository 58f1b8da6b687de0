"""`metergate run SERVICE`: run one metergate service in the foreground (its settings from the environment)."""

from __future__ import annotations

import importlib

import click

SERVICES = ("metering", "rating", "entitlements", "admin")


@click.command("run")
@click.argument("service", type=click.Choice(SERVICES), metavar="SERVICE")
def run(service: str) -> None:
    """Run a metergate service: metering (Faust worker), rating (consumer), entitlements (sidecar HTTP)
    or admin (the admin HTTP API)."""
    module = importlib.import_module(f"metergate_services.{service}.main")
    module.run()
