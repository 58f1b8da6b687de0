"""`metergate keys`: API keys of the entitlement sidecar (create prints the key once; only its hash is stored).

The key file is `METERGATE_ENTITLEMENTS_KEYS_FILE` (default `.metergate/entitlements-keys.json`,
mode 0600), the file the sidecar reads; `--file` names another.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from metergate.entitlements.keys import SCOPES, KeyStore
from metergate.errors import InvalidInput


def _store(path: Path | None) -> KeyStore:
    if path is None:
        from metergate.entitlements.settings import EntitlementsSettings

        path = EntitlementsSettings().keys_file
    return KeyStore(path)


_file = click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Key file (default: the sidecar's).",
)


@click.group("keys")
def keys() -> None:
    """API keys of the entitlement sidecar."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what uses the key (shown in errors and `keys list`).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="check, ingest or admin; repeatable.",
)
@click.option(
    "--customer",
    "customers",
    multiple=True,
    help="Bind the key to this customer; repeatable (none: all customers).",
)
@_file
def create(name: str, scopes: tuple[str, ...], customers: tuple[str, ...], path: Path | None) -> None:
    """Create a key and print it once (store it now: only its hash is kept)."""
    store = _store(path)
    try:
        key, plaintext = store.create(name, scopes, customers)
    except InvalidInput as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(plaintext)
    bound = f" for {', '.join(key.customers)}" if key.customers else " for every customer"
    click.echo(
        f"key {key.id} ({key.name}): scopes {', '.join(key.scopes)}{bound}; stored in {store.path}", err=True
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@_file
def list_keys(as_json: bool, path: Path | None) -> None:
    """Every key: id, name, scopes, customers, created and revoked (never a secret)."""
    for key in _store(path).list():
        if as_json:
            click.echo(json.dumps(key.public()))
        else:
            state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
            customers = ",".join(key.customers) or "*"
            click.echo(
                f"{key.id}  {key.name}  {','.join(key.scopes)}  customers={customers}  {key.created_at}  {state}"
            )


@keys.command("revoke")
@click.argument("key")
@_file
def revoke(key: str, path: Path | None) -> None:
    """Revoke a key by id or name (a running sidecar refuses it within a second)."""
    try:
        revoked = _store(path).revoke(key)
    except InvalidInput as exc:
        raise click.UsageError(str(exc)) from None
    for item in revoked:
        click.echo(f"revoked {item.id} ({item.name})")
