"""EntitlementsClient: the entitlement sidecar over HTTP, with timeouts and the same fallback rule.

    from metergate.sdk import EntitlementsClient

    with EntitlementsClient("http://127.0.0.1:8182", api_key=key, fallback={"*": False}) as client:
        decision = client.check("acme", "api_calls", requested_units=5)
        if decision.has_access:
            ...

Every call has a timeout (`timeout_s`, default 0.25 s: a check is answered from memory, so a slow
answer means the sidecar is not there). When the sidecar cannot be reached, times out or answers
5xx, `check` answers with the configured per-feature fallback (`metergate.domain.entitlements.
fallback`: the feature's rule, else `"*"`), marked `source: fallback` and `stale: true`; without a
rule it raises `SidecarUnavailable`. A refusal (400, 401, 403) is never replaced by a fallback: it
raises `SidecarRefused` with the sidecar's reason, field and message. The key never appears in a
repr or a log line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from metergate.domain.entitlements import Decision, Reason, Source, fallback, requested
from metergate.domain.records import Enforcement, FeatureKind
from metergate.errors import MetergateError

_DECIMALS = ("usage", "included", "limit", "remaining", "requested_units", "overage_units")
_TIMES = ("period_start", "period_end", "as_of")


class SidecarUnavailable(MetergateError):
    """The sidecar did not answer (and no fallback rule covers the feature)."""


class SidecarRefused(MetergateError):
    """The sidecar refused the request (bad input, no or wrong key, a customer the key may not see)."""

    def __init__(self, status: int, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.field, self.message = status, reason, field, message


def decision_from_json(body: Mapping[str, Any]) -> Decision:
    values: dict[str, Any] = dict(body)
    for name in _DECIMALS:
        if values.get(name) is not None:
            values[name] = Decimal(values[name])
    for name in _TIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    values["reason"] = Reason(values["reason"])
    values["source"] = Source(values["source"])
    if values.get("kind") is not None:
        values["kind"] = FeatureKind(values["kind"])
    if values.get("enforcement") is not None:
        values["enforcement"] = Enforcement(values["enforcement"])
    return Decision(**values)


class EntitlementsClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8182",
        *,
        api_key: str,
        timeout_s: float = 0.25,
        ingest_timeout_s: float = 15.0,
        fallback: Mapping[str, bool] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.fallback = dict(fallback or {})
        self._timeout_s = timeout_s
        self._ingest_timeout_s = ingest_timeout_s
        self._http = httpx.Client(
            base_url=base_url,
            headers={"X-API-Key": api_key},
            timeout=timeout_s,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"EntitlementsClient({self.base_url!r}, timeout_s={self._timeout_s})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EntitlementsClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------------
    def check(
        self,
        customer_id: str,
        feature: str,
        requested_units: Decimal | int | str = 1,
        subject_id: str | None = None,
    ) -> Decision:
        units = requested(requested_units)
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "feature": feature,
            "requested_units": f"{units:f}",
        }
        if subject_id is not None:
            body["subject_id"] = subject_id
        try:
            answer = self._post("/v1/entitlements/check", body)
        except SidecarUnavailable:
            decision = fallback(customer_id, feature, self.fallback, units, stale=True)
            if decision is None:
                raise
            return decision
        return decision_from_json(answer)

    def check_batch(self, checks: Iterable[Mapping[str, Any]]) -> list[Decision]:
        items = []
        for item in checks:
            entry = dict(item)
            if "requested_units" in entry:
                entry["requested_units"] = f"{requested(entry['requested_units']):f}"
            items.append(entry)
        answer = self._post("/v1/entitlements/check:batch", {"checks": items})
        return [decision_from_json(d) for d in answer["decisions"]]

    def customer(self, customer_id: str) -> dict[str, Any]:
        answer = self._request(
            "GET", f"/v1/customers/{httpx.URL(customer_id).raw_path.decode()}/entitlements"
        )
        answer["features"] = [decision_from_json(d) for d in answer["features"]]
        return answer

    def report(self, events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Report usage; returns the sidecar's receipt (`accepted`, `duplicate`, `rejected`, `events`)."""
        payload = [_jsonable(dict(e)) for e in events]
        return self._post("/v1/events", payload, timeout_s=self._ingest_timeout_s)

    # -- transport ---------------------------------------------------------------------------------
    def _post(self, path: str, body: Any, timeout_s: float | None = None) -> Any:
        return self._request("POST", path, json=body, timeout_s=timeout_s)

    def _request(self, method: str, path: str, json: Any = None, timeout_s: float | None = None) -> Any:
        try:
            response = self._http.request(
                method, path, json=json, timeout=timeout_s if timeout_s is not None else self._timeout_s
            )
        except httpx.TransportError as exc:
            raise SidecarUnavailable(
                f"entitlements sidecar at {self.base_url} did not answer: {exc!s}"
            ) from None
        if response.status_code >= 500:
            raise SidecarUnavailable(
                f"entitlements sidecar at {self.base_url} answered {response.status_code}"
            )
        body = response.json()
        if response.status_code >= 400:
            raise SidecarRefused(
                response.status_code,
                body.get("reason", "refused"),
                body.get("message", ""),
                body.get("field"),
            )
        return body


def _jsonable(event: dict[str, Any]) -> dict[str, Any]:
    for name, value in list(event.items()):
        if isinstance(value, Decimal):
            event[name] = f"{value:f}"
        elif isinstance(value, datetime):
            event[name] = value.isoformat()
    return event
