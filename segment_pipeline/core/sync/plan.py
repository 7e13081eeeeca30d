"""What the next sync run would change, before it changes it: the plan summary and the removal guard.

:func:`plan_summary` condenses a written plan (:func:`~segment_pipeline.core.sync.diff.write_plan`)
into counts: contacts to **add** (new to the destination: not a list member and no value known),
**update** (upserts of contacts it holds), **clear** (their segment value emptied), **remove** (from
the list), and per mapped field the values to **set**, the **clears** and the values **over** the
field's limit; plus ``contacts_held`` (what the mirror says the destination holds) and ``leaving``
(contacts cleared, removed or losing a mapped field) with its ``share``. The same summary is the
``plan`` of every run's metadata (no email address in it).

:func:`preview` runs the plan of the next run without sending anything and without a network call
(the CLI's ``segment-pipeline sync plan <destination>``): the same warehouse, mirror and settings
as the asset, the target the last real run used, plus a small sample of the contacts per change,
emails masked (:func:`mask_email`: ``j***@example.com``).

The **removal guard** (:class:`RemovalGuardError`): a real run whose plan has ``leaving`` over
``SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE`` (default 0.2) of ``contacts_held`` stops before it
sends anything, unless confirmed (``segment-pipeline sync run <name> --allow-large-removal`` on the
CLI, run config ``allow_large_removal: true`` on the ``<name>_sync`` asset). A destination holding nobody yet
(first sync) has nothing to lose and is never stopped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from segment_pipeline.core.sync.fields import UNSET_PREFIX, path_literal
from segment_pipeline.core.sync.mappings import FieldMapping
from segment_pipeline.core.sync.state import Target
from segment_pipeline.core.warehouse import sql_string

if TYPE_CHECKING:
    from segment_pipeline.core.sync.diff import PlanCounts
    from segment_pipeline.core.sync.engine import Destination
    from segment_pipeline.core.warehouse import Warehouse

GUARD_ENV = "SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE"


class RemovalGuardError(RuntimeError):
    """A run would clear or remove more than the configured share of the destination's contacts.

    ``plan``: the run's plan summary (:func:`plan_summary`, no address), for the failure's metadata;
    ``counts``: its :class:`~segment_pipeline.core.sync.diff.PlanCounts`."""

    def __init__(self, message: str, plan: Mapping[str, Any] | None = None, counts: PlanCounts | None = None):
        super().__init__(message)
        self.plan: dict[str, Any] = dict(plan or {})
        self.counts = counts


def privacy_reason(leaving: int, held_back: Mapping[str, Any], forgotten: int = 0) -> str:
    """The sentence a guard stop adds when privacy explains removals (empty when nothing is held back).

    ``held_back``: the privacy filter's counts for the run's day and segments
    (:func:`segment_pipeline.core.privacy.filters.privacy_counts`: ``suppressed`` per list,
    ``consent_withheld``); ``forgotten``: contacts left out of the plan (tombstoned; not in
    ``leaving``). When the held-back members are at least half of ``leaving`` the sentence says they
    can explain the removals (a new suppression list, a consent gate), not a bad upstream day."""
    per_list = {str(k): int(v) for k, v in dict(held_back.get("suppressed") or {}).items() if v}
    suppressed = sum(per_list.values())
    consent = int(held_back.get("consent_withheld") or 0)
    parts = []
    if suppressed:
        parts.append(f"{suppressed:,} on suppression lists ("
                     + ", ".join(f"{name} {n:,}" for name, n in sorted(per_list.items())) + ")")
    if consent:
        parts.append(f"{consent:,} without consent (consent gate)")
    out = ""
    if parts:
        held = suppressed + consent
        out = f" Privacy holds back {held:,} of the day's members: {' and '.join(parts)}"
        out += ("; these can explain the removals (a new or grown suppression list, a new consent gate) rather than "
                "a bad upstream day." if leaving and held * 2 >= leaving else ".")
    if forgotten:
        out += f" {forgotten:,} contacts asked to be forgotten are left out of the plan (not counted above)."
    return out


def guard_message(name: str, counts: PlanCounts, limit: float, day: str) -> str:
    share = counts.leaving / counts.held_contacts
    return (f"{name}: this run would clear, remove or take a mapped field from {counts.leaving:,} of the "
            f"{counts.held_contacts:,} contacts the destination holds ({share:.1%}), over the removal guard of "
            f"{limit:.0%} ({GUARD_ENV}); check the data of {day} (a bad upstream day empties audiences), see "
            f"`segment-pipeline sync plan {name}`, and confirm with the sync asset's run config "
            f"`allow_large_removal: true` or `segment-pipeline sync run {name} --allow-large-removal`")


def mask_email(email: str) -> str:
    """``jane@example.com`` -> ``j***@example.com`` (the domain kept, the local part hidden)."""
    local, at, domain = email.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else f"{email[:1]}***"


def _plan_rel(plan_path: Path) -> str:
    return f"read_parquet({sql_string(str(plan_path))})"


def plan_summary(counts: PlanCounts, plan_path: Path | None, mappings: Sequence[FieldMapping]) -> dict[str, Any]:
    """The counts of a written plan (see the module docstring); no email address in it."""
    add = update = 0
    if plan_path is not None and plan_path.exists():
        con = duckdb.connect()
        try:
            add, update = con.execute(
                f"SELECT count(*) FILTER (WHERE NOT member AND held IS NULL), "
                f"count(*) FILTER (WHERE member OR held IS NOT NULL) FROM {_plan_rel(plan_path)} "
                "WHERE action = 'upsert'").fetchall()[0]
        finally:
            con.close()
    out: dict[str, Any] = {
        "contacts_held": counts.held_contacts, "desired": counts.desired, "add": int(add or 0),
        "update": int(update or 0), "clear": counts.clears, "remove": counts.removals,
        "leaving": counts.leaving, "forgotten": counts.forgotten,
        "leaving_share": round(counts.leaving / counts.held_contacts, 4) if counts.held_contacts else 0.0,
    }
    fc = counts.field_counts
    if fc is not None and mappings:
        out["fields"] = {m.target: {"from": m.source, "set": fc.sets[m.target], "clear": fc.clears[m.target],
                                    "over_limit": fc.over[m.target]} for m in mappings}
    return out


@dataclass
class Preview:
    """What :func:`preview` found: the summary, samples per change (masked emails) and the guard."""

    destination: str
    target: str
    day: str
    summary: dict[str, Any]
    samples: dict[str, list[str]]
    guard_limit: float | None
    guard_stops: bool
    notes: list[str]

    def render(self) -> str:
        s = self.summary
        lines = [f"sync plan: {self.destination}, memberships of {self.day}",
                 f"  target: {self.target}",
                 f"  contacts held now: {s['contacts_held']:,}; desired: {s['desired']:,}",
                 f"  add:    {s['add']:,}", f"  update: {s['update']:,}",
                 f"  clear:  {s['clear']:,}", f"  remove: {s['remove']:,}"]
        for name, f in (s.get("fields") or {}).items():
            lines.append(f"  field {name} (from {f['from']}): set {f['set']:,}, clear {f['clear']:,}"
                         + (f", over the length limit (not sent) {f['over_limit']:,}" if f["over_limit"] else ""))
        for what, emails in self.samples.items():
            if emails:
                lines.append(f"  sample {what}: {', '.join(emails)}")
        lines.append(f"  leaving (cleared, removed or losing a field): {s['leaving']:,} "
                     f"({s['leaving_share']:.1%} of the contacts held)")
        if self.guard_limit is not None:
            lines.append(f"  removal guard: {self.guard_limit:.0%} -> "
                         + ("the next run STOPS unless confirmed (--allow-large-removal)" if self.guard_stops
                            else "passes"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _samples(plan_path: Path, mappings: Sequence[FieldMapping], n: int) -> dict[str, list[str]]:
    con = duckdb.connect()
    rel = _plan_rel(plan_path)
    out: dict[str, list[str]] = {}
    try:
        cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()]
        queries = {"add": "action = 'upsert' AND NOT member AND held IS NULL",
                   "update": "action = 'upsert' AND (member OR held IS NOT NULL)",
                   "clear": "action = 'clear'", "remove": "action = 'remove'"}
        if "fields" in cols:
            for m in mappings:
                v = f"json_extract(fields, {path_literal(m.target)})::VARCHAR"
                queries[f"{m.target} set"] = f"action = 'upsert' AND {v} IS NOT NULL AND {v} <> 'null'"
                queries[f"{m.target} clear"] = (f"(action = 'upsert' AND {v} = 'null') OR "
                                                f"action = {sql_string(UNSET_PREFIX + m.target)}")
        for what, where in queries.items():
            rows = con.execute(f"SELECT email FROM {rel} WHERE {where} ORDER BY email LIMIT ?", [n]).fetchall()
            out[what] = [mask_email(e) for (e,) in rows]
    finally:
        con.close()
    return out


def preview(destination: Destination, warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *,
            state_dir: Path, max_removal_share: float | None, sample: int = 3) -> Preview:
    """Plan the next run of ``destination`` (its client is not used: no network) against the mirror
    in ``state_dir`` and the last target a real run used; nothing is sent or recorded. A destination
    holding one audience per segment is previewed for its first synced segment only."""
    from segment_pipeline.core.sync.engine import _Run  # the engine's own planning, unchanged

    client, destination.client = destination.client, None
    try:
        if destination.capabilities.audience_per_segment and synced:
            first = sorted(synced.items(), key=lambda kv: (kv[1], kv[0]))[0]
            destination.segment = first
            synced = dict([first])
        run = _Run(destination, warehouse, day, synced, Path(state_dir), Path(state_dir) / "unused",
                   None, guard=(max_removal_share, True))
        try:
            last = run.store.get_meta(run.last_key)
            run.target = Target.parse(last) if last else Target.parse(f"{destination.name}|not-synced-yet")
            destination.dry_connect()
            run.plan()
            assert run.plan_path is not None and run.counts is not None
            samples = _samples(run.plan_path, destination.mappings if run.mapped else (), sample)
            c = run.counts
            stops = bool(max_removal_share is not None and c.held_contacts
                         and c.leaving / c.held_contacts > max_removal_share)
            notes = [n for n in run.report.notes if "removal guard" not in n]
            return Preview(destination.name, run.target.dest, str(day), run.report.plan, samples,
                           max_removal_share, stops, notes)
        finally:
            if run.plan_path is not None and run.plan_path.exists():
                run.plan_path.unlink()
            run.store.close()
    finally:
        destination.client = client
        destination.segment = None
