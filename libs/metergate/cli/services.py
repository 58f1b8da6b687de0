"""`metergate run SERVICE`: run one metergate service in the foreground (its settings from the environment)."""

from __future__ import annotations

import importlib

import click

SERVICES = ("metering", "rating", "entitlements")


@click.command("run")
@click.argument("service", type=click.Choice(SERVICES))
def run(service: str) -> None:
    """Run a metergate service: metering (Faust worker), rating (consumer) or entitlements (sidecar HTTP)."""
    module = importlib.import_module(f"metergate_services.{service}.main")
    module.run()
