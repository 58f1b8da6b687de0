"""The credit ledger: prepaid credit as append-only signed entries (pure: no I/O).

Entries
-------
| entry_type     | sign | written when                                   | idempotency key                                  |
| -------------- | ---- | ---------------------------------------------- | ------------------------------------------------ |
| `credit_grant` | +    | `metergate credits grant`                      | `grant:{grant_id}`                               |
| `usage_debit`  | -    | a rated line's amount grows (a newer version)  | `usage_debit:{line_key}|v{version}|{grant_id}`   |
| `adjustment`   | +    | a rated line's amount falls below its credits  | `usage_refund:{line_key}|v{version}|{grant_id}`  |
| `expiry`       | -    | a grant reaches `expires_at` (what is left)    | `expiry:{grant_id}`                              |
| `expiry`       | -    | a refund lands on an already expired grant     | `expiry:{grant_id}|{line_key}|v{version}`        |

`line_key` is (customer, subscription, feature, period, charge), so every usage entry names the
customer, meter/feature, period and aggregate version it came from (auditable), and the same
source can never write a second entry (the key is unique in the table).

Rules
-----
1. **Balance = sum of entries.** A customer's balance (per currency) is the sum of its entries; a
   grant's remaining credit is the sum of the entries carrying its id. Nothing else stores money:
   the ledger is append-only (entries are never updated or deleted; a correction is a new entry).
2. **Credits pay usage charges, as they are rated.** Only usage (overage) line items draw credit;
   the base fee is invoiced. When a line's rounded amount grows from A to A' (a newer aggregate
   version), the delta A' - A is drawn from the customer's grants; what they cannot cover stays
   due on the invoice. A grant never pays retroactively for usage rated before it existed.
3. **Drawdown order**: lowest `priority` number first, then earliest `expires_at` (no expiry
   last), then earliest `granted_at`, then grant id. A grant can pay for usage that happened
   (event time = the aggregate's `last_event_at`) at or after its `effective_at` (if set) and
   before its `expires_at`. Event time, not the clock, so a replay or a crash-restart draws
   exactly as the uninterrupted run did.
4. **Versions, replays, out of order.** A line remembers the aggregate version it was computed
   from; a version not newer than that is ignored entirely (no line change, no entry), so a replay
   from offset 0, a redelivery after a crash or an older version arriving late changes nothing.
   Every newer version is applied in order, one at a time, even when several arrive in one batch,
   so the entries written do not depend on how records were batched.
5. **Falling amounts.** A running total may fall (a LATEST or MAX gauge that is reset, a volume
   discount tier, a plan change): when a line's new amount is below the credits it has used, the
   excess goes back to the grants it came from, last drawn first, as `adjustment` entries. Credit
   returned to a grant whose expiry is already recorded expires again at once (a second `expiry`
   entry), since it would have expired had it not been spent.
6. **Expiry** writes, once per grant, an `expiry` entry of minus what is left when `expires_at` has
   passed (the clock decides here: `expire_grants(now)`).
7. **Depletion.** When a usage debit brings the customer's balance from above zero to exactly zero,
   that is one depletion: it is numbered (1, 2, ... per customer and currency) and announced by one
   `credits_depleted` LimitEvent whose id ends with that number, so a re-sent event is recognisably
   the same one and a later depletion (after a new grant) is a new one.
8. **Currency.** A grant is in one currency and pays only charges in that currency. Amounts are
   exact in the currency's minor unit (grants are refused otherwise, charges are rounded once).
9. **Published balance.** Every transaction that writes entries for a customer also records, in
   that transaction, the customer's balance as a `CreditBalance` (topic `credits.balances`, key
   customer_id), relayed after COMMIT:
   - `balance` is the ledger balance of rule 1 in the currency of the customer's newest entry:
     the sum of its entries = what its grants have left (never negative). A grant past
     `expires_at` counts until its expiry entry is written (rule 6, within the expiry interval),
     a grant whose `effective_at` is still ahead counts already: the figure moves with the
     ledger only, never with the clock, so each figure belongs to one ledger position.
   - `ledger_position` is the highest ledger entry id of the customer it includes. Entry ids come
     from one sequence, and every change to a customer's credit holds its account lock until
     COMMIT, so a customer's positions grow in commit order: a higher position is a newer balance.
   - The relay never publishes a balance older than one already published for the customer
     (`balances_to_publish`): of the unpublished balances it holds, it sends only the newest,
     and only when no other relay holds an older unpublished one (which might reach the topic
     after it) and it has none of the customer's in flight. Re-sending the same position after a
     crash is harmless: readers keep the highest position per key, and the compacted topic's
     last record per key is the newest.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from metergate.domain.pricing import is_minor_exact
from metergate.domain.records import key_part
from metergate.errors import InvalidInput

ZERO = Decimal(0)


class EntryType(enum.StrEnum):
    CREDIT_GRANT = "credit_grant"
    USAGE_DEBIT = "usage_debit"
    EXPIRY = "expiry"
    ADJUSTMENT = "adjustment"


class GrantError(InvalidInput):
    """A credit grant that cannot be recorded (amount, currency, dates)."""

    reason = "invalid_grant"


@dataclass(frozen=True)
class Grant:
    """Prepaid credit given to a customer."""

    grant_id: str
    customer_id: str
    currency: str
    amount: Decimal
    priority: int
    granted_at: datetime
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    description: str | None = None

    def usable_at(self, at: datetime) -> bool:
        """May this grant pay for usage that happened at `at` (event time)?"""
        if self.effective_at is not None and at < self.effective_at:
            return False
        return self.expires_at is None or at < self.expires_at


def validate_grant(grant: Grant) -> None:
    if not grant.grant_id:
        raise GrantError("grant_id: expected a non-empty id", field="grant_id")
    if not grant.amount.is_finite() or grant.amount <= 0:
        raise GrantError(f"amount: expected a positive amount, got {grant.amount}", field="amount")
    if not is_minor_exact(grant.amount, grant.currency):
        raise GrantError(
            f"amount: {grant.amount} has more decimals than {grant.currency} has minor units", field="amount"
        )
    if (
        grant.expires_at is not None
        and grant.effective_at is not None
        and grant.expires_at <= grant.effective_at
    ):
        raise GrantError(
            f"expires_at: expected after effective_at ({grant.effective_at.isoformat()}), got {grant.expires_at.isoformat()}",
            field="expires_at",
        )


def drawdown_key(grant: Grant) -> tuple[int, bool, datetime | None, datetime, str]:
    """Sort key of the drawdown order: priority, then earliest expiry (none last), then age, then id."""
    return (grant.priority, grant.expires_at is None, grant.expires_at, grant.granted_at, grant.grant_id)


def drawdown_order(grants: Iterable[Grant]) -> list[Grant]:
    return sorted(grants, key=drawdown_key)


@dataclass(frozen=True)
class Entry:
    """One ledger entry (amount signed: + credit, - debit)."""

    idempotency_key: str
    customer_id: str
    currency: str
    grant_id: str
    entry_type: EntryType
    amount: Decimal
    effective_at: datetime  # event time of the usage, time of the grant or of the expiry
    line_key: str | None = None
    aggregate_version: int | None = None
    note: str = ""


def grant_entry(grant: Grant) -> Entry:
    validate_grant(grant)
    return Entry(
        idempotency_key=f"grant:{grant.grant_id}",
        customer_id=grant.customer_id,
        currency=grant.currency,
        grant_id=grant.grant_id,
        entry_type=EntryType.CREDIT_GRANT,
        amount=grant.amount,
        effective_at=grant.effective_at or grant.granted_at,
        note=grant.description or "",
    )


@dataclass(frozen=True)
class Depletion:
    """A customer's balance reached zero through a usage debit (number `sequence` for the customer)."""

    customer_id: str
    currency: str
    sequence: int
    line_key: str
    aggregate_version: int


@dataclass
class Wallet:
    """One customer's credit in one currency: the working copy a transaction reads and changes.

    `remaining[grant_id]` is the sum of that grant's entries (as loaded, then kept in step with the
    entries this wallet emits); `expired` holds grants whose `expiry:{grant_id}` entry exists.
    """

    customer_id: str
    currency: str
    grants: dict[str, Grant] = field(default_factory=dict)
    remaining: dict[str, Decimal] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    depletions: int = 0

    @property
    def balance(self) -> Decimal:
        return sum(self.remaining.values(), ZERO)

    def add_grant(self, grant: Grant) -> Entry:
        """Record a new grant (its `credit_grant` entry)."""
        if grant.customer_id != self.customer_id or grant.currency != self.currency:
            raise GrantError(
                f"grant {grant.grant_id}: belongs to {grant.customer_id}/{grant.currency}, not {self.customer_id}/{self.currency}"
            )
        entry = grant_entry(grant)
        self.grants[grant.grant_id] = grant
        self.remaining[grant.grant_id] = self.remaining.get(grant.grant_id, ZERO) + entry.amount
        return entry

    def _apply(self, entry: Entry) -> Entry:
        self.remaining[entry.grant_id] = self.remaining.get(entry.grant_id, ZERO) + entry.amount
        return entry


@dataclass(frozen=True)
class CreditChange:
    """What a change of one line's amount did to the customer's credit."""

    entries: tuple[Entry, ...]
    credits_by_grant: dict[str, Decimal]  # credit the line now uses, per grant (positive amounts)
    depletion: Depletion | None = None

    @property
    def credits_applied(self) -> Decimal:
        return sum(self.credits_by_grant.values(), ZERO)


def change_line_amount(
    wallet: Wallet | None,
    *,
    line_key: str,
    customer_id: str,
    old_amount: Decimal,
    new_amount: Decimal,
    credits_by_grant: Mapping[str, Decimal],
    version: int,
    used_at: datetime,
) -> CreditChange:
    """Apply a line's move from `old_amount` to `new_amount` (aggregate `version`) to the credit.

    Growth is drawn from usable grants in drawdown order (rule 2, 3); a fall below the credits the
    line uses returns the excess, last drawn first (rule 5). `wallet` None: the customer has no
    credit account, nothing to draw or return.
    """
    by_grant = {grant_id: amount for grant_id, amount in credits_by_grant.items() if amount}
    if wallet is None:
        if by_grant:
            raise ValueError(f"line {line_key} uses credit but its customer has no wallet loaded")
        return CreditChange((), {})
    entries: list[Entry] = []
    depletion: Depletion | None = None
    delta = new_amount - old_amount
    if delta > 0:
        balance_before = wallet.balance
        needed = delta
        for grant in drawdown_order(wallet.grants.values()):
            if needed <= 0:
                break
            available = wallet.remaining.get(grant.grant_id, ZERO)
            if available <= 0 or not grant.usable_at(used_at):
                continue
            drawn = min(available, needed)
            needed -= drawn
            by_grant[grant.grant_id] = by_grant.get(grant.grant_id, ZERO) + drawn
            entries.append(
                wallet._apply(
                    Entry(
                        idempotency_key=f"usage_debit:{line_key}|v{version}|{key_part(grant.grant_id)}",
                        customer_id=customer_id,
                        currency=wallet.currency,
                        grant_id=grant.grant_id,
                        entry_type=EntryType.USAGE_DEBIT,
                        amount=-drawn,
                        effective_at=used_at,
                        line_key=line_key,
                        aggregate_version=version,
                    )
                )
            )
        if entries and balance_before > 0 and wallet.balance == 0:
            wallet.depletions += 1
            depletion = Depletion(customer_id, wallet.currency, wallet.depletions, line_key, version)
    else:
        excess = sum(by_grant.values(), ZERO) - max(new_amount, ZERO)
        if excess > 0:
            used = [wallet.grants[grant_id] for grant_id in by_grant]
            for grant in reversed(drawdown_order(used)):
                if excess <= 0:
                    break
                back = min(by_grant[grant.grant_id], excess)
                excess -= back
                by_grant[grant.grant_id] -= back
                if not by_grant[grant.grant_id]:
                    del by_grant[grant.grant_id]
                entries.append(
                    wallet._apply(
                        Entry(
                            idempotency_key=f"usage_refund:{line_key}|v{version}|{key_part(grant.grant_id)}",
                            customer_id=customer_id,
                            currency=wallet.currency,
                            grant_id=grant.grant_id,
                            entry_type=EntryType.ADJUSTMENT,
                            amount=back,
                            effective_at=used_at,
                            line_key=line_key,
                            aggregate_version=version,
                            note="usage amount fell: credit returned",
                        )
                    )
                )
                if grant.grant_id in wallet.expired:
                    entries.append(
                        wallet._apply(
                            Entry(
                                idempotency_key=f"{grant_expiry_key(grant.grant_id)}|{line_key}|v{version}",
                                customer_id=customer_id,
                                currency=wallet.currency,
                                grant_id=grant.grant_id,
                                entry_type=EntryType.EXPIRY,
                                amount=-back,
                                effective_at=used_at,
                                line_key=line_key,
                                aggregate_version=version,
                                note="credit returned to an expired grant expires",
                            )
                        )
                    )
    return CreditChange(tuple(entries), by_grant, depletion)


def expire_grants(wallet: Wallet, now: datetime) -> list[Entry]:
    """Expiry entries (rule 6) for every grant of `wallet` whose `expires_at` <= now, once each."""
    entries: list[Entry] = []
    for grant in drawdown_order(wallet.grants.values()):
        if grant.expires_at is None or grant.expires_at > now or grant.grant_id in wallet.expired:
            continue
        left = wallet.remaining.get(grant.grant_id, ZERO)
        wallet.expired.add(grant.grant_id)
        entries.append(
            wallet._apply(
                Entry(
                    idempotency_key=grant_expiry_key(grant.grant_id),
                    customer_id=wallet.customer_id,
                    currency=wallet.currency,
                    grant_id=grant.grant_id,
                    entry_type=EntryType.EXPIRY,
                    amount=-left,
                    effective_at=grant.expires_at,
                    note=f"grant expired with {left} left",
                )
            )
        )
    return entries


def grant_expiry_key(grant_id: str) -> str:
    """Idempotency key of a grant's own expiry entry (what is left when it expires)."""
    return f"expiry:{key_part(grant_id)}"


def depletion_event_id(customer_id: str, currency: str, sequence: int) -> str:
    """Stable id of the `sequence`-th depletion of a customer's credit (see rule 7)."""
    return f"{key_part(customer_id)}|credits|{currency}|credits_depleted|{sequence}"


@dataclass(frozen=True)
class BalanceRow:
    """A recorded balance of a customer, as the outbox holds it (rule 9)."""

    customer_id: str
    ledger_position: int
    published: bool


@dataclass(frozen=True)
class BalanceRelay:
    """What one relay round does with the balances it holds: send some, drop the superseded ones."""

    send: tuple[tuple[str, int], ...]  # (customer_id, ledger_position), at most one per customer
    superseded: tuple[tuple[str, int], ...]  # held rows never to be sent: a newer one exists


def balances_to_publish(
    held: Iterable[tuple[str, int]], known: Iterable[BalanceRow], in_flight: Collection[str] = ()
) -> BalanceRelay:
    """Rule 9: which of the unpublished balances this relay `held` (locked) to send now.

    `known` is every recorded balance of those customers (this relay's and others', published or
    not); `in_flight` the customers with a balance this relay sent whose delivery report has not
    come. Per customer: nothing while one of its balances is in flight, or while an older
    unpublished one is held by another relay (sending now might land before it); otherwise the
    newest held one is sent, unless a newer one exists (published, or held by another relay), and
    every other held one is superseded.
    """
    mine: dict[str, set[int]] = {}
    for customer_id, position in held:
        mine.setdefault(customer_id, set()).add(position)
    rows: dict[str, list[BalanceRow]] = {}
    for row in known:
        if row.customer_id in mine:
            rows.setdefault(row.customer_id, []).append(row)
    send: list[tuple[str, int]] = []
    superseded: list[tuple[str, int]] = []
    for customer_id in sorted(mine):
        if customer_id in in_flight:
            continue
        positions = mine[customer_id]
        newest = max(positions)
        others = [row for row in rows.get(customer_id, ()) if row.ledger_position not in positions]
        if any(not row.published and row.ledger_position < newest for row in others):
            continue  # another relay holds an older one: it goes first
        if any(row.ledger_position > newest for row in others):
            superseded.extend((customer_id, p) for p in sorted(positions))
            continue
        send.append((customer_id, newest))
        superseded.extend((customer_id, p) for p in sorted(positions) if p != newest)
    return BalanceRelay(tuple(send), tuple(superseded))
