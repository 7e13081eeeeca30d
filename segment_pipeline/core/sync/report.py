"""What one sync run did, as numbers (safe for Dagster metadata: no secrets, no emails)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class SyncReport:
    integration: str
    destination: str  # mirror key, e.g. "klaviyo|https://a.klaviyo.com|list=AbC123|prop=nosto_segment"
    day: str
    dry_run: bool
    run_id: str = ""
    desired: int = 0  # emails that should carry at least one segment name
    planned_upserts: int = 0
    planned_clears: int = 0
    planned_removals: int = 0
    upserted: int = 0  # profiles/contacts confirmed with their new segment list
    added: int = 0  # of which new to the list / address book
    cleared: int = 0  # property / data field confirmed cleared
    removed: int = 0  # removed from the list (Klaviyo)
    rejected: int = 0  # rows the destination refused this run (recorded, retried next run)
    truncated: int = 0  # values over the destination's length limit, fitted (whole names kept; state ``truncated``)
    report_mismatches: int = 0  # batches whose counters reported more problems than the rows they named
    unconfirmed: int = 0  # rows left unconfirmed because a refusal named no row (sent again next run)
    held_contacts: int = 0  # contacts the destination held before the run, per the mirror
    leaving: int = 0  # planned: contacts cleared, removed or losing a mapped field (the removal guard's count)
    forgotten: int = 0  # contacts left out of the plan (every action): they asked to be forgotten (tombstoned)
    planned_field_values: int = 0  # planned mapped-field values to send (contacts x fields)
    planned_field_clears: int = 0  # planned mapped-field clears (contacts x fields)
    fields_over_limit: int = 0  # mapped values over the field's length limit, not sent
    fields_updated: int = 0  # upserted contacts that carried mapped-field changes (confirmed)
    fields_cleared: int = 0  # mapped-field clears sent on their own (dotdigital ``unset`` rows, confirmed)
    batches: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    faults: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    status: str = "ok"
    payload_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    #: the plan summary (:func:`segment_pipeline.core.sync.plan.plan_summary`: counts per action and
    #: per mapped field, no email addresses), also the asset's ``plan`` metadata
    plan: dict[str, object] = field(default_factory=dict)

    @property
    def records_sent(self) -> int:
        return self.upserted + self.cleared + self.rejected

    def counts(self) -> dict[str, float | int]:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)
