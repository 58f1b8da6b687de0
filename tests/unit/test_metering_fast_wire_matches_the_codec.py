"""The metering worker's fast reader/writer produce exactly what the codec reads and writes."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from metergate.domain.records import Aggregation, UsageAggregate, UsageEvent
from metergate.errors import DecodeError
from metergate.wire import fastwire
from metergate.wire.codec import codec
from metergate.wire.fastwire import read_event, with_segments, write_aggregate

pytestmark = pytest.mark.unit
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

millis = st.integers(min_value=0, max_value=4_102_444_800_000)
text = st.text(min_size=1, max_size=40)
quantities = st.decimals(
    min_value=-(10**20), max_value=10**20, places=9, allow_nan=False, allow_infinity=False
)


def moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


@given(
    customer=text,
    meter=text,
    aggregation=st.sampled_from(list(Aggregation)),
    start=millis,
    end=millis,
    value=quantities,
    count=st.integers(0, 2**62),
    version=st.integers(0, 2**62),
    last=millis,
    last_id=st.text(max_size=30),
    late=st.booleans(),
    subscription=st.none() | text,
    plan=st.none() | text,
    plan_version=st.none() | st.integers(-(2**31), 2**31 - 1),
    updated=millis,
    segments=st.lists(
        st.tuples(
            millis,
            st.none() | text,
            st.none() | text,
            st.none() | st.integers(-(2**31), 2**31 - 1),
            quantities,
            st.integers(0, 2**62),
        ),
        max_size=3,
    ),
)
def test_aggregate_bytes_equal_the_codec(
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
    fields = dict(
        customer_id=customer,
        meter=meter,
        aggregation=aggregation.value,
        value=value,
        event_count=count,
        version=version,
        last_event_id=last_id,
        late=late,
        subscription_id=subscription,
        plan_key=plan,
        plan_version=plan_version,
    )
    fast = with_segments(
        write_aggregate(
            **fields, period_start_ms=start, period_end_ms=end, last_event_ms=last, updated_at_ms=updated
        ),
        segments,
    )
    names = ("start", "subscription_id", "plan_key", "plan_version", "value", "event_count")
    reference = codec(UsageAggregate).encode_dict(
        {
            **fields,
            "period_start": start,
            "period_end": end,
            "last_event_at": last,
            "updated_at": updated,
            "segments": [dict(zip(names, segment, strict=True)) for segment in segments],
        }
    )
    assert fast == reference
    decoded = codec(UsageAggregate).decode(fast)
    assert decoded.value == value and decoded.period_start == moment(start)
    assert [(moment(s[0]), s[4], s[5]) for s in segments] == [
        (segment.start, segment.value, segment.event_count) for segment in decoded.segments
    ]


@given(
    quantity=st.decimals(min_value=0, max_value=10**20, places=9, allow_nan=False),
    ms=millis,
    props=st.dictionaries(text, text, max_size=3),
)
def test_event_reader_agrees_with_the_codec(quantity, ms, props):
    event = UsageEvent(
        event_id="e", customer_id="c", meter="m", quantity=quantity, timestamp=moment(ms), properties=props
    )
    datum = read_event(codec(UsageEvent).encode(event))
    reference = codec(UsageEvent).decode_dict(codec(UsageEvent).encode(event))
    assert datum["quantity"] == reference["quantity"] == quantity
    assert datum["timestamp"] == ms
    assert {k: v for k, v in datum.items() if k not in ("quantity", "timestamp")} == {
        k: v for k, v in reference.items() if k not in ("quantity", "timestamp")
    }


@pytest.mark.parametrize(("value", "reason"), [(b"nope", "not_avro"), (None, "not_avro")])
def test_event_reader_keeps_the_codec_reasons(value, reason):
    with pytest.raises(DecodeError) as caught:
        read_event(value)
    assert caught.value.reason == reason


def test_a_corrupt_body_is_undecodable():
    good = codec(UsageEvent).encode(
        UsageEvent(event_id="e", customer_id="c", meter="m", quantity=Decimal(1), timestamp=moment(0))
    )
    with pytest.raises(DecodeError) as caught:
        read_event(good[:12] + b"\xff\xff\xff\xff")
    assert caught.value.reason == "undecodable"


def test_a_usage_event_with_trailing_bytes_is_undecodable_in_both_readers():
    event = UsageEvent(
        event_id="e1",
        customer_id="acme",
        meter="api_calls",
        quantity=Decimal("1.5"),
        timestamp=datetime(2026, 1, 2, tzinfo=UTC),
    )
    value = codec(UsageEvent).encode(event) + b"\x00\x01"
    with pytest.raises(DecodeError) as fast:
        read_event(value)
    with pytest.raises(DecodeError) as generic:
        codec(UsageEvent).decode(value)
    assert fast.value.reason == generic.value.reason == "undecodable"
    assert "2 trailing byte" in str(fast.value)


@given(
    event_id=text,
    customer=text,
    subject=st.none() | text,
    meter=text,
    quantity=quantities,
    ms=st.integers(min_value=-(2**40), max_value=2**45),
    props=st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=5),
    source=st.none() | st.text(max_size=30),
)
def test_the_hand_reader_reads_every_event_as_fastavro_does(
    event_id, customer, subject, meter, quantity, ms, props, source
):
    datum = {
        "event_id": event_id,
        "customer_id": customer,
        "subject_id": subject,
        "meter": meter,
        "quantity": quantity,
        "timestamp": EPOCH + timedelta(milliseconds=ms),
        "properties": props,
        "source": source,
    }
    value = codec(UsageEvent).encode_dict(datum)
    fast = read_event(value)
    reference = codec(UsageEvent).decode_dict(value)
    reference["timestamp"] = (reference["timestamp"] - EPOCH) // timedelta(milliseconds=1)
    assert fast == reference
    assert fast["quantity"].as_tuple() == reference["quantity"].as_tuple()  # same scale too


@given(st.binary(max_size=60))
def test_garbage_after_the_header_is_undecodable_or_read_as_fastavro_reads_it(body):
    value = (
        codec(UsageEvent).encode_dict(
            {
                "event_id": "e",
                "customer_id": "c",
                "meter": "m",
                "quantity": Decimal(1),
                "timestamp": moment(0),
            }
        )[:10]
        + body
    )
    try:
        reference = codec(UsageEvent).decode_dict(value)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as caught:
            read_event(value)
        assert caught.value.reason == exc.reason
        return
    reference["timestamp"] = (reference["timestamp"] - EPOCH) // timedelta(milliseconds=1)
    assert read_event(value) == reference


def _event_with_timestamp_bytes(varint: bytes) -> bytes:
    """A UsageEvent value whose timestamp field is `varint` (any bytes, valid or not)."""
    head = codec(UsageEvent).encode_dict(
        {"event_id": "e", "customer_id": "c", "meter": "m", "quantity": Decimal(1), "timestamp": moment(0)}
    )
    # the body after the header: "e", "c", null subject, "m", quantity 1 (0x3b9aca00, 4 bytes)
    fields = b"\x02e\x02c\x00\x02m\x08" + (10**9).to_bytes(4, "big")
    assert head[10:].startswith(fields)
    return head[: 10 + len(fields)] + varint + b"\x00\x00"  # no properties, null source


def _zigzag(value: int) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    return out.getvalue()


@example(-(2**63))
@example(2**63 - 1)
@example(2**62)
@example(-1)
@given(st.integers(-(2**63), 2**63 - 1))
def test_every_64_bit_long_reads_as_fastavro_reads_it(ms):
    value = _event_with_timestamp_bytes(_zigzag(ms))
    assert read_event(value)["timestamp"] == ms


@pytest.mark.parametrize(
    "varint",
    [
        b"\xff" * 9 + b"\x01",  # the largest zigzag varint: -(2**63)
        b"\xff" * 9 + b"\x02",  # one bit beyond 64
        b"\xff" * 10 + b"\x01",  # eleven bytes
        b"\x80",  # cut short by the end of the record
    ],
)
def test_a_long_beyond_64_bits_or_cut_short_is_read_or_refused_as_fastavro_does(varint):
    value = _event_with_timestamp_bytes(varint)
    try:
        reference = fastavro.schemaless_reader(io.BytesIO(value[10:]), fastwire._PLAIN_EVENT, None)
    except Exception:  # fastavro raises many types
        with pytest.raises(DecodeError) as caught:
            read_event(value)
        assert caught.value.reason == "undecodable"
        return
    assert read_event(value)["timestamp"] == reference["timestamp"]


def test_the_installed_package_runs_the_compiled_reader_built_from_the_current_source():
    assert fastwire.COMPILED, (
        "metergate.wire.fastwire is the uncompiled source: build it with `make .venv/.installed` "
        "(pip install -e .)"
    )
    built = Path(fastwire.__file__)
    for source in (built.with_name("fastwire.py"), built.with_name("fastwire.pxd")):
        if source.exists():  # an editable install: the build must be newer than its source
            assert built.stat().st_mtime >= source.stat().st_mtime, (
                f"{built.name} is older than {source.name}: rebuild with `pip install -e .`"
            )
