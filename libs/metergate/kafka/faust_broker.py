"""Faust's (aiokafka's) broker URL and credentials from the shared `KafkaSettings`.

librdkafka clients take `KafkaSettings.client_config()`; the metering worker's Faust app takes
`faust.App(..., **faust_broker_kwargs(kafka))`. Both read the same settings, so one
`METERGATE_KAFKA_SECURITY_PROTOCOL` / `METERGATE_KAFKA_SASL_*` configures every client:

| security_protocol | Faust credentials |
| --- | --- |
| unset or PLAINTEXT (no SASL settings) | none |
| SSL | `SSLCredentials` (system CAs, server authentication) |
| SASL_PLAINTEXT (or unset with SASL settings) | `SASLCredentials(username, password, mechanism)` |
| SASL_SSL | `SASLCredentials(..., ssl_context=system CAs)` |
"""

from __future__ import annotations

import ssl
from typing import Any

from metergate.settings import KafkaSettings

_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def faust_broker_url(bootstrap: str) -> str:
    """`host1:9092,host2:9092` -> `kafka://host1:9092;kafka://host2:9092` (Faust's broker list)."""
    hosts = [host.strip() for host in bootstrap.split(",") if host.strip()]
    return ";".join(f"kafka://{host}" for host in hosts)


def faust_broker_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """`broker` and, when security is configured, `broker_credentials` for `faust.App`.

    Raises ValueError (one line naming the setting and what would be right) for a protocol or
    mechanism Faust cannot use, or a SASL setting without its username/password.
    """
    import faust

    if not kafka.bootstrap:
        raise ValueError("METERGATE_KAFKA_BOOTSTRAP is not set and no embedded broker was started")
    kwargs: dict[str, Any] = {"broker": faust_broker_url(kafka.bootstrap)}
    protocol = (kafka.security_protocol or "").upper()
    sasl = bool(kafka.sasl_mechanism or kafka.sasl_username or kafka.sasl_password)
    if not protocol:
        protocol = "SASL_PLAINTEXT" if sasl else "PLAINTEXT"
    if protocol not in _PROTOCOLS:
        raise ValueError(
            f"METERGATE_KAFKA_SECURITY_PROTOCOL: expected one of {', '.join(_PROTOCOLS)}, got {kafka.security_protocol!r}"
        )
    if protocol in ("PLAINTEXT", "SSL") and sasl:
        raise ValueError(
            f"METERGATE_KAFKA_SECURITY_PROTOCOL: {protocol} does not use the METERGATE_KAFKA_SASL_* settings "
            "(set it to SASL_PLAINTEXT or SASL_SSL)"
        )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        kwargs["broker_credentials"] = faust.SSLCredentials(context)
    elif protocol.startswith("SASL"):
        mechanism = (kafka.sasl_mechanism or "PLAIN").upper()
        if mechanism not in _MECHANISMS:
            raise ValueError(
                f"METERGATE_KAFKA_SASL_MECHANISM: expected one of {', '.join(_MECHANISMS)}, got {kafka.sasl_mechanism!r}"
            )
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ValueError(
                f"METERGATE_KAFKA_SASL_USERNAME and METERGATE_KAFKA_SASL_PASSWORD: both are needed for {protocol}"
            )
        kwargs["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=mechanism,
            ssl_context=context,
        )
    return kwargs
