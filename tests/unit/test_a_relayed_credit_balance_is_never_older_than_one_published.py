"""Rule 9 of the credit ledger: of the balances a relay holds it sends each customer's newest, never
while an older one is held elsewhere or one of the customer's is in flight; and over any interleaving
of writers, relays (several, each with its own transaction), deliveries, delivery failures and
relay crashes, the
balances reaching the topic never go back in ledger position, and the last one of each customer is
its newest."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.domain.ledger import BalanceRelay, BalanceRow, balances_to_publish

pytestmark = pytest.mark.unit


def rows(*specs: tuple[str, int, bool]) -> list[BalanceRow]:
    return [BalanceRow(c, p, published) for c, p, published in specs]


def test_the_newest_held_balance_is_sent_and_the_older_ones_are_superseded():
    held = [("acme", 3), ("acme", 7), ("acme", 5)]
    known = rows(("acme", 1, True), ("acme", 3, False), ("acme", 5, False), ("acme", 7, False))
    assert balances_to_publish(held, known) == BalanceRelay(
        send=(("acme", 7),), superseded=(("acme", 3), ("acme", 5))
    )


def test_each_customer_is_decided_on_its_own():
    held = [("b", 4), ("a", 2)]
    known = rows(("a", 2, False), ("b", 4, False))
    assert balances_to_publish(held, known) == BalanceRelay(send=(("a", 2), ("b", 4)), superseded=())


def test_an_older_balance_held_by_another_relay_goes_first():
    # another relay holds 5 (unpublished, not ours): sending 7 now could land before its 5
    known = rows(("acme", 5, False), ("acme", 7, False))
    assert balances_to_publish([("acme", 7)], known) == BalanceRelay(send=(), superseded=())


def test_a_newer_balance_elsewhere_supersedes_what_this_relay_holds():
    held = [("acme", 5), ("acme", 6)]
    for newer_published in (True, False):  # published already, or held by another relay
        known = rows(("acme", 5, False), ("acme", 6, False), ("acme", 9, newer_published))
        assert balances_to_publish(held, known) == BalanceRelay(
            send=(), superseded=(("acme", 5), ("acme", 6))
        )


def test_nothing_is_sent_for_a_customer_with_a_balance_in_flight():
    known = rows(("acme", 5, True), ("acme", 8, False), ("zeta", 2, False))
    relay = balances_to_publish([("acme", 8), ("zeta", 2)], known, in_flight={"acme"})
    assert relay == BalanceRelay(send=(("zeta", 2),), superseded=())


def test_an_older_published_balance_does_not_hold_a_newer_one_back():
    known = rows(("acme", 2, True), ("acme", 4, False))
    assert balances_to_publish([("acme", 4)], known).send == (("acme", 4),)


def test_nothing_held_sends_nothing():
    assert balances_to_publish([], rows(("acme", 1, False))) == BalanceRelay((), ())


# -- a model of the outbox table, relays and the topic, driven by hypothesis -------------------------


@dataclass
class Relay:
    """One relay's publisher transaction: its locks, what it changed (seen by others after COMMIT),
    what it produced and what was delivered."""

    locks: set[tuple[str, int]] = field(default_factory=set)
    dropped: set[tuple[str, int]] = field(default_factory=set)
    in_flight: list[tuple[str, int]] = field(default_factory=list)  # in production order
    delivered: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class Outbox:
    customers: tuple[str, ...]
    table: dict[tuple[str, int], bool] = field(default_factory=dict)  # committed: row -> published
    relays: list[Relay] = field(default_factory=list)
    topic: list[tuple[str, int]] = field(default_factory=list)
    position: int = 0
    newest: dict[str, int] = field(default_factory=dict)  # customer -> its newest balance written

    def write(self, customer: str) -> None:
        """A ledger transaction of `customer` commits its balance at the next entry id."""
        self.position += 1
        self.table[(customer, self.position)] = False
        self.newest[customer] = self.position

    def view(self, relay: Relay) -> dict[tuple[str, int], bool]:
        """The table as this relay's transaction sees it: committed state plus its own changes."""
        seen = {row: published for row, published in self.table.items() if row not in relay.dropped}
        for row in relay.delivered:
            if row in seen:
                seen[row] = True
        return seen

    def round(self, relay: Relay) -> None:
        """`RatingConsumer._relay_balances`: claim (SKIP LOCKED), decide, drop, produce."""
        taken = set().union(*(r.locks for r in self.relays if r is not relay))
        seen = self.view(relay)
        relay.locks |= {row for row, published in seen.items() if not published and row not in taken}
        sent = set(relay.in_flight) | relay.delivered
        claimed = [row for row in relay.locks if row in seen and not seen[row]]
        known = [BalanceRow(c, p, published or (c, p) in sent) for (c, p), published in seen.items()]
        waiting = {c for c, _ in relay.in_flight}
        decision = balances_to_publish([row for row in claimed if row not in sent], known, waiting)
        relay.dropped |= set(decision.superseded)
        relay.in_flight.extend(decision.send)

    def deliver(self, relay: Relay) -> None:
        """The broker acknowledges the relay's oldest produced record (one producer keeps its order)."""
        if relay.in_flight:
            row = relay.in_flight.pop(0)
            self.topic.append(row)
            relay.delivered.add(row)

    def fail(self, relay: Relay) -> None:
        """librdkafka gives up on the relay's oldest produced record (a definitive delivery failure)."""
        if relay.in_flight:
            relay.in_flight.pop(0)

    def commit(self, relay: Relay) -> None:
        """`_mark_published` with nothing in flight: marks, drops and older published rows go; locks free."""
        if relay.in_flight:
            return
        for row in relay.dropped:
            self.table.pop(row, None)
        for customer, position in relay.delivered:
            if (customer, position) in self.table:
                self.table[(customer, position)] = True
            for older in [r for r in self.table if r[0] == customer and r[1] < position and self.table[r]]:
                del self.table[older]
        relay.locks.clear()
        relay.dropped.clear()
        relay.delivered.clear()

    def crash(self, relay: Relay, delivered_first: bool) -> None:
        """The relay's process dies: its queued records were either delivered or lost; its
        transaction rolls back (nothing marked, nothing dropped)."""
        if delivered_first:
            self.topic.extend(relay.in_flight)
        self.relays[self.relays.index(relay)] = Relay()


@settings(max_examples=300, deadline=None)
@given(
    relays=st.integers(min_value=1, max_value=3),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["write", "round", "deliver", "fail", "commit", "crash"]), st.integers(0, 5)
        ),
        max_size=60,
    ),
)
def test_relayed_balances_never_go_back_and_the_newest_of_each_customer_lands_last(relays, steps):
    outbox = Outbox(customers=("a", "b"))
    outbox.relays = [Relay() for _ in range(relays)]
    for operation, n in steps:
        relay = outbox.relays[n % relays]
        if operation == "write":
            outbox.write(outbox.customers[n % 2])
        elif operation == "round":
            outbox.round(relay)
        elif operation == "deliver":
            outbox.deliver(relay)
        elif operation == "fail":
            outbox.fail(relay)
        elif operation == "commit":
            outbox.commit(relay)
        else:
            outbox.crash(relay, delivered_first=n % 2 == 0)
    for _ in range(10):  # then every relay runs until the outbox is empty
        for relay in outbox.relays:
            outbox.round(relay)
            while relay.in_flight:
                outbox.deliver(relay)
            outbox.commit(relay)
    assert not [row for row, published in outbox.table.items() if not published], outbox.table
    for customer in outbox.customers:
        positions = [p for c, p in outbox.topic if c == customer]
        assert positions == sorted(positions), (customer, outbox.topic)  # never an older one after a newer
        assert (positions[-1] if positions else None) == outbox.newest.get(customer)
