"""How the command line reports what a user can fix: one line on stderr, exit code 2."""

from __future__ import annotations

import click

from metergate.errors import MetergateError


class BadSetup(click.ClickException, MetergateError):
    """One line, exit code 2 (like click's usage errors): what was wrong and what would be right."""

    exit_code = 2
