"""The `metergate` command. Each command group lives in its own module of this package."""

from metergate.cli.main import main

__all__ = ["main"]
