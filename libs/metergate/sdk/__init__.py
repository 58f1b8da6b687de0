"""The producer SDK: what a product service uses to emit usage.

from metergate.sdk import UsageProducer

with UsageProducer.from_env() as usage:
    usage.record(customer_id="acme", meter="api_calls", quantity=1, event_id=request_id)
"""

from metergate.sdk.entitlements import EntitlementsClient, SidecarRefused, SidecarUnavailable
from metergate.sdk.producer import BatchResult, UsageProducer

__all__ = ["BatchResult", "EntitlementsClient", "SidecarRefused", "SidecarUnavailable", "UsageProducer"]
