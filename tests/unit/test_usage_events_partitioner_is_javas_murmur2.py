"""partition_for equals Java's `Utils.toPositive(Utils.murmur2(key)) % n`.

Checked two ways: Kafka's own published murmur2 vectors (clients UtilsTest), and an independent
implementation written here in Java's signed 32-bit arithmetic (no code shared with the module).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metergate.domain.partitioning import murmur2, partition_for

#: org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _int32(value: int) -> int:
    """Wrap to a Java int."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _ushr(value: int, bits: int) -> int:
    """Java's `>>>` on an int."""
    return (value & 0xFFFFFFFF) >> bits


def java_murmur2(data: bytes) -> int:
    """A transcription of Kafka's Utils.murmur2 with signed ints, switch fall-through and all."""
    length = len(data)
    seed = _int32(0x9747B28C)
    m = 0x5BD1E995
    h = _int32(seed ^ length)
    for i in range(length // 4):
        i4 = i * 4
        k = _int32(data[i4] + (data[i4 + 1] << 8) + (data[i4 + 2] << 16) + (data[i4 + 3] << 24))
        k = _int32(k * m)
        k = _int32(k ^ _ushr(k, 24))
        k = _int32(k * m)
        h = _int32(h * m)
        h = _int32(h ^ k)
    rest = length % 4
    base = length & ~3
    if rest == 3:
        h = _int32(h ^ (data[base + 2] << 16))
    if rest >= 2:
        h = _int32(h ^ (data[base + 1] << 8))
    if rest >= 1:
        h = _int32(h ^ data[base])
        h = _int32(h * m)
    h = _int32(h ^ _ushr(h, 13))
    h = _int32(h * m)
    h = _int32(h ^ _ushr(h, 15))
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions  # Utils.toPositive(...) % n


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_VECTORS.items()))
def test_murmur2_matches_kafkas_published_vectors(key: bytes, expected: int) -> None:
    assert _int32(murmur2(key)) == expected
    assert java_murmur2(key) == expected


@given(st.binary(max_size=64))
def test_murmur2_equals_the_independent_java_transcription(data: bytes) -> None:
    assert _int32(murmur2(data)) == java_murmur2(data)


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=1000))
def test_partition_for_equals_java_to_positive_murmur2_mod_n(customer_id: str, partitions: int) -> None:
    try:
        key = customer_id.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: not a valid customer_id (rejected at the edge)
    assert partition_for(customer_id, partitions) == java_partition(key, partitions)


def test_known_customer_partitions() -> None:
    # toPositive(-790332482) = 1357151166; 1357151166 % 4 = 2, % 7 = 0 (by hand)
    assert partition_for("foobar", 4) == 1357151166 % 4 == 2
    assert partition_for("foobar", 7) == 1357151166 % 7
    assert partition_for("foobar", 1) == 0


@pytest.mark.parametrize("partitions", [0, -1])
def test_partition_for_rejects_a_partition_count_below_one(partitions: int) -> None:
    with pytest.raises(ValueError, match="partitions: expected a positive partition count"):
        partition_for("c", partitions)
