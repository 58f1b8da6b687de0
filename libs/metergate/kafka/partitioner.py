"""The partitioner setting of every metergate producer: the hash of `metergate.domain.partitioning`
(murmur2, Kafka's Java default), so a customer's records land where metering counts them."""

from __future__ import annotations

from metergate.domain.partitioning import partition_for

#: librdkafka's name for the same hash (random partition for a null key, as Java's sticky one)
LIBRDKAFKA_PARTITIONER = "murmur2_random"

__all__ = ["LIBRDKAFKA_PARTITIONER", "partition_for"]
