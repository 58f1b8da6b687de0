"""Where a customer is counted: the one partitioner of `usage.events`, Kafka's Java default for
keyed records (murmur2).

`partition_for(key, n)` is `Utils.toPositive(Utils.murmur2(key.encode("utf-8"))) % n`, what the
Java producer's default partitioner, Sarama's/franz-go's Java-compatible hashers and KafkaJS's
default compute for a non-null key, and what librdkafka computes with `partitioner=murmur2_random`
(the setting the SDK and `metergate emit` use). A pipeline keyed by customer can therefore find a
customer's canonical partition without asking the producer which one it chose.

Pure: no Kafka client is imported here.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` (MurmurHash2, seed 0x9747b28c), as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for(customer_id: str, partitions: int) -> int:
    """The partition of `usage.events` a record keyed by `customer_id` belongs on (Java-compatible)."""
    if partitions < 1:
        raise ValueError(f"partitions: expected a positive partition count, got {partitions}")
    return (murmur2(customer_id.encode("utf-8")) & 0x7FFFFFFF) % partitions
