"""The sidecar's raw check route reads a body exactly as the request models do: what its plain path
accepts is what the model accepts (same values), and everything else is answered by the model
(same field and message). Each answer leaves the server in one write."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import orjson
import pytest

from metergate_services.entitlements.api import BatchCheckRequest, CheckRequest
from metergate_services.entitlements.checks import Problem, _many, _one, _plain_check
from metergate_services.entitlements.main import _OneWrite

pytestmark = pytest.mark.unit

BODIES = [
    b'{"customer_id":"acme","feature":"api_calls"}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":0}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":5,"subject_id":"team-1"}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":"2.5"}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":99999999999999999999999999999}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":100000000000000000000000000000}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":1.5}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":-1}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":true}',
    b'{"customer_id":"acme","feature":"api_calls","requested_units":NaN}',
    b'{"customer_id":"","feature":"api_calls"}',
    b'{"customer_id":"' + b"x" * 257 + b'","feature":"api_calls"}',
    b'{"customer_id":7,"feature":"api_calls"}',
    b'{"feature":"api_calls"}',
    b'{"customer_id":"acme","feature":"api_calls","extra":1}',
    b'{"customer_id":"acme","feature":"api_calls","subject_id":null}',
    b'{"customer_id":"acme","feature":"api_calls","subject_id":""}',
    b"[1, 2]",
    b"not json",
]


def by_model(raw: bytes, model: type[CheckRequest] | type[BatchCheckRequest]) -> object:
    """The reference: the standard library's JSON and the pydantic model, as the other handlers read."""
    try:
        data = json.loads(raw)
    except ValueError:
        return "invalid_json"
    if not isinstance(data, dict):
        return "invalid_body"
    try:
        item = model.model_validate(data)
    except ValueError:
        return "invalid_field"
    if isinstance(item, BatchCheckRequest):
        return [(c.customer_id, c.feature, Decimal(c.requested_units), c.subject_id) for c in item.checks]
    return (item.customer_id, item.feature, Decimal(item.requested_units), item.subject_id)


def by_route(raw: bytes, batch: bool) -> object:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    try:
        if batch:
            return [(c, f, Decimal(u), s) for c, f, u, s in _many(data, raw)]
        c, f, u, s = _one(data, raw)
        return (c, f, Decimal(u), s)
    except Problem as problem:
        return problem.reason


@pytest.mark.parametrize("raw", BODIES)
def test_one_check_is_read_as_the_model_reads_it(raw):
    assert by_route(raw, batch=False) == by_model(raw, CheckRequest)


@pytest.mark.parametrize("raw", BODIES[:17])
def test_a_batch_is_read_as_the_model_reads_it(raw):
    good = b'{"customer_id":"b","feature":"sso"}'
    for body in (b'{"checks":[' + good + b"," + raw + b"]}", b'{"checks":[' + raw + b"]}"):
        assert by_route(body, batch=True) == by_model(body, BatchCheckRequest)
    for body in (b'{"checks":[]}', b'{"checks":[' + b",".join([good] * 101) + b"]}", b'{"checks":[],"x":1}'):
        assert by_route(body, batch=True) == by_model(body, BatchCheckRequest) == "invalid_field"


def test_the_plain_path_takes_only_what_needs_no_model():
    assert _plain_check({"customer_id": "a", "feature": "f"}) == ("a", "f", Decimal(1), None)
    assert _plain_check({"customer_id": "a", "feature": "f", "requested_units": "2"}) is None


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_head_and_its_body_leave_in_one_write_and_a_lone_head_at_the_end_of_the_turn():
    async def scenario() -> Recorder:
        inner = Recorder()
        transport = _OneWrite(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # a head with nothing after it
        assert len(inner.writes) == 1
        await asyncio.sleep(0)  # the end of this turn of the loop
        assert inner.writes[1] == b"HTTP/1.1 100 Continue\r\n\r\n"
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        transport.close()  # an error answer followed by close: written first
        assert inner.writes[2] == b"HTTP/1.1 400 Bad Request\r\n\r\n" and inner.closed
        assert transport.get_extra_info("peername") == "info:peername"
        await asyncio.sleep(0)
        assert len(inner.writes) == 3  # nothing written twice
        return inner

    asyncio.run(scenario())
