"""A balance published to `credits.balances` reaches the in-process check: zero credit denies usage
beyond the included units with `credits_exhausted`, a later ledger position with credit allows it again,
and an older position relayed late never rolls it back. Real broker; the balance is produced directly
(rating publishing it: test_a_customer_whose_credits_run_out_is_denied_by_the_check.py). The clock
is injected: the fixed NOW of the unit tests."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metergate.domain.entitlements import Reason
from metergate.domain.records import CreditBalance, Pricing, PricingModel
from metergate.entitlements import Entitlements, EntitlementsSettings
from metergate.settings import KafkaSettings
from metergate.testing.waiting import wait_until
from metergate.wire.codec import codec
from tests.integration.entitlements_support import (
    aggregate,
    publish_aggregates,
    publish_records,
    publish_snapshots,
)
from tests.unit.test_entitlement_decisions import END, NOW, START, snapshot

pytestmark = pytest.mark.integration


def publish_balance(kafka_config, topics, amount: str, position: int) -> None:
    record = CreditBalance(
        customer_id="acme", currency="USD", balance=Decimal(amount), ledger_position=position, as_of=NOW
    )
    publish_records(kafka_config, topics.balances, [(b"acme", codec(CreditBalance).encode(record))])


def test_a_zero_balance_on_the_topic_denies_and_a_new_grant_allows(kafka_bootstrap, kafka_config, topics):
    priced = snapshot(pricing=Pricing(model=PricingModel.PER_UNIT, unit_price=Decimal("0.01")))
    publish_snapshots(kafka_config, topics, priced)
    publish_aggregates(kafka_config, topics, aggregate("acme", "requests", START, END, 50, version=3))
    publish_balance(kafka_config, topics, "0", 12)
    settings = EntitlementsSettings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topics.prefix), checkpoint_path=None
    )
    with Entitlements(settings) as entitlements:
        assert entitlements.wait_caught_up(30)
        denied = entitlements.check("acme", "api_calls", 1, now=NOW)
        assert (denied.has_access, denied.reason, denied.usage) == (
            False,
            Reason.CREDITS_EXHAUSTED,
            Decimal(50),
        )
        assert "is 0" in denied.message
        publish_balance(kafka_config, topics, "7", 11)  # older ledger position, relayed late
        publish_balance(kafka_config, topics, "0.01", 13)  # a new grant
        wait_until(
            lambda: entitlements.check("acme", "api_calls", 1, now=NOW).reason is Reason.OK,
            "grant applied",
            timeout_s=30,
            every_s=0.02,
        )
        assert entitlements.state.credit_balance("acme") == Decimal("0.01")
