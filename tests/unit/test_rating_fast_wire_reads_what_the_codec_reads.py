"""The rating consumer's fast UsageAggregate reader gives exactly what the codec gives, errors included."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metergate.domain.rating import AggregateUpdate
from metergate.domain.records import Aggregation, UsageAggregate
from metergate.errors import DecodeError
from metergate.wire import fastwire
from metergate.wire.codec import codec
from metergate.wire.fastwire import read_aggregate

pytestmark = pytest.mark.unit

CODEC = codec(UsageAggregate)
millis = st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999)  # years 1-9999
identifiers = st.text(min_size=1, max_size=300)  # up to 256 characters is valid
values = st.decimals(
    min_value=-(10**29) + 1, max_value=10**29 - 1, places=9, allow_nan=False, allow_infinity=False
)


def outcome(data: bytes, read) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    try:
        return "ok", read(data)
    except DecodeError as exc:
        return exc.reason, str(exc)


def codec_read(data: bytes) -> AggregateUpdate:
    return AggregateUpdate.of(CODEC.decode(data))


def encode(**fields: object) -> bytes:
    return CODEC.encode_dict(fields)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # big strings, slow under load
@given(
    customer=identifiers,
    meter=identifiers,
    aggregation=st.sampled_from([a.value for a in Aggregation]),
    start=millis,
    end=millis,
    value=values,
    count=st.integers(-(2**63), 2**63 - 1),
    version=st.integers(-(2**63), 2**63 - 1),
    last=millis,
    last_id=st.text(max_size=100),
    late=st.booleans(),
    subscription=st.none() | st.text(max_size=100),
    plan=st.none() | st.text(max_size=100),
    plan_version=st.none() | st.integers(-(2**31), 2**31 - 1),
    updated=millis,
    segments=st.lists(
        st.fixed_dictionaries(
            {
                "start": millis,
                "subscription_id": st.none() | st.text(max_size=100),
                "plan_key": st.none() | st.text(max_size=100),
                "plan_version": st.none() | st.integers(-(2**31), 2**31 - 1),
                "value": values,
                "event_count": st.integers(-(2**63), 2**63 - 1),
            }
        ),
        max_size=3,
    ),
)
@example(
    customer="c",
    meter="m",
    aggregation="SUM",
    start=1_772_323_200_000,
    end=1_775_001_600_000,
    value=Decimal("1234.5"),
    count=1,
    version=1,
    last=1_772_323_200_123,
    last_id="e",
    late=False,
    subscription=None,
    plan=None,
    plan_version=None,
    updated=1_772_323_200_123,
    segments=[],
)
@example(  # an upgrade on day 15: two segments
    customer="c",
    meter="m",
    aggregation="SUM",
    start=1_793_491_200_000,  # 2026-11-01
    end=1_796_083_200_000,
    value=Decimal("36000000"),
    count=5,
    version=9,
    last=1_794_960_000_000,
    last_id="e",
    late=False,
    subscription=None,
    plan=None,
    plan_version=None,
    updated=1_794_960_000_000,
    segments=[
        {
            "start": 1_793_491_200_000,
            "subscription_id": "acme",
            "plan_key": "growth",
            "plan_version": 1,
            "value": Decimal(6_000_000),
            "event_count": 3,
        },
        {
            "start": 1_794_700_800_000,  # 2026-11-15
            "subscription_id": "acme",
            "plan_key": "scale",
            "plan_version": 1,
            "value": Decimal(30_000_000),
            "event_count": 2,
        },
    ],
)
def test_every_record_reads_as_the_codec_reads_it(
    customer,
    meter,
    aggregation,
    start,
    end,
    value,
    count,
    version,
    last,
    last_id,
    late,
    subscription,
    plan,
    plan_version,
    updated,
    segments,
):
    data = encode(
        customer_id=customer,
        meter=meter,
        aggregation=aggregation,
        period_start=start,
        period_end=end,
        value=value,
        event_count=count,
        version=version,
        last_event_at=last,
        last_event_id=last_id,
        late=late,
        subscription_id=subscription,
        plan_key=plan,
        plan_version=plan_version,
        updated_at=updated,
        segments=segments,
    )
    fast, reference = outcome(data, read_aggregate), outcome(data, codec_read)
    assert fast == reference
    if fast[0] == "ok":
        # the same Decimal representation (exponent too), the same aware datetimes
        assert [str(v) for v in fast[1]] == [str(v) for v in reference[1]]  # type: ignore[attr-defined]
        assert [[str(v) for v in s] for s in fast[1].segments] == [  # type: ignore[attr-defined]
            [str(v) for v in s]
            for s in reference[1].segments  # type: ignore[attr-defined]
        ]
        fastwire._HEADS.clear()
        assert read_aggregate(data) == reference[1]  # a head read fresh equals a cached one


def _valid() -> bytes:
    return encode(
        customer_id="cust-000001",
        meter="api_calls",
        aggregation="SUM",
        period_start=1_772_323_200_000,
        period_end=1_775_001_600_000,
        value=Decimal("1234.000000001"),
        event_count=300,
        version=70_000,
        last_event_at=1_772_323_200_123,
        last_event_id="e-1",
        late=True,
        subscription_id="sub-1",
        plan_key="pro",
        plan_version=3,
        updated_at=1_772_323_200_456,
        segments=[
            {
                "start": 1_772_323_200_000,
                "subscription_id": "sub-1",
                "plan_key": "pro",
                "plan_version": 3,
                "value": Decimal("1000"),
                "event_count": 200,
            },
            {
                "start": 1_773_532_800_000,
                "subscription_id": "sub-1",
                "plan_key": "max",
                "plan_version": 1,
                "value": Decimal("234.000000001"),
                "event_count": 100,
            },
        ],
    )


def test_corrupt_and_truncated_bytes_fail_as_the_codec_fails() -> None:
    # seeded, so a failure reproduces; every byte value at every position, truncations, trailing bytes
    rng = random.Random(20260301)
    valid = _valid()
    for _ in range(4000):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        cut = rng.randint(0, len(raw))
        for candidate in (bytes(raw), bytes(raw[:cut]), valid[:cut], valid + bytes(raw[:3])):
            assert outcome(candidate, read_aggregate) == outcome(candidate, codec_read), candidate.hex()


def test_other_records_and_foreign_bytes_get_the_codec_reasons() -> None:
    assert outcome(b"", read_aggregate)[0] == "not_avro"
    assert outcome(b"{}", read_aggregate)[0] == "not_avro"
    assert outcome(b"\xc3\x01" + b"\x00" * 8 + b"x", read_aggregate)[0] == "unknown_schema"
    from metergate.domain.records import DuplicateReceipt

    other = codec(DuplicateReceipt).schema.fingerprint
    assert outcome(b"\xc3\x01" + other + b"\x00", read_aggregate)[0] == "unexpected_schema"
    too_long = encode(
        **{**CODEC.decode_dict(_valid()), "customer_id": "x" * 257}  # the model refuses > 256 characters
    )
    assert outcome(too_long, read_aggregate) == outcome(too_long, codec_read)
    assert outcome(too_long, read_aggregate)[0] == "invalid_record"
