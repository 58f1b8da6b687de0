"""metergate: event-streaming usage metering and entitlement enforcement.

Pure domain logic lives in `metergate.domain`; wire codecs in `metergate.wire`; everything that
touches Kafka or PostgreSQL in `metergate.kafka` and `metergate.db`; the embedded dev stack in
`metergate.embedded`; the producer SDK in `metergate.sdk`.
"""

__version__ = "0.1.0"
