"""Segment memberships: one asset for the membership dataset, one per segment for the UI.

Every segment in the definitions file becomes an asset (``segment/<id>``) whose page shows its
member-count trend, day-over-day changes and a preview of the first 100 members (by email, with a
caption "first 100 of N members", and the profile fields the segment's rule reads, from the data
model: ``Catalog.preview_fields``); all of them are
computed together in one pass over profiles and events by the ``memberships`` multi-asset. An
invalid definitions file stops the code location from loading, with a message naming the segment.
Edit the YAML and reload the code location to add or change segments.
"""

import datetime as dt
from decimal import Decimal

import dagster as dg
import yaml

from segment_pipeline import settings
from segment_pipeline.core.memberships import compute_memberships
from segment_pipeline.core.segments import Catalog, load_catalog
from segment_pipeline.core.warehouse import Warehouse, connect, sql_string
from segment_pipeline.defs.automation.conditions import DAILY, DAILY_FRESHNESS
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource

MEMBERSHIPS = dg.AssetKey("memberships")
CHANGES = dg.AssetKey("membership_changes")
PREVIEW_ROWS = 100


def segment_key(segment_id: str) -> dg.AssetKey:
    return dg.AssetKey(["segment", segment_id])


class MembershipsConfig(dg.Config):
    refresh_static: list[str] = []
    """Ids of static segments to re-evaluate (refresh) on the materialized day(s)."""


def segment_description(seg) -> str:
    """The asset description: plain sentences that read the same as raw text (the catalog's list
    shows descriptions unrendered) and as Markdown (the asset page): no emphasis, code or fences.
    The rule is one line of YAML flow style; the asset's definition metadata has it as JSON."""
    window = []
    if seg.active_from:
        window.append(f"from {seg.active_from}")
    if seg.active_until:
        window.append(f"until {seg.active_until} (exclusive)")
    head = f"{seg.name} ({seg.type}, {seg.status}{', ' + ', '.join(window) if window else ''})."
    rule = yaml.safe_dump(dict(seg.rule), sort_keys=False, allow_unicode=True, default_flow_style=True,
                          width=1_000_000).strip()
    return " ".join(part for part in [head, (seg.description or "").strip(), f"Rule: {rule}"] if part)


def _segment_spec(seg) -> dg.AssetSpec:
    synced = [k for k, v in seg.sync.items() if v]
    return dg.AssetSpec(
        segment_key(seg.id),
        deps=[MEMBERSHIPS],
        description=segment_description(seg),
        group_name="segments",
        kinds={"duckdb"},
        skippable=True,
        tags={f"sync/{k}": "" for k in synced},
        metadata={"segment_name": seg.name, "segment_type": seg.type, "rule": dg.MetadataValue.json(dict(seg.rule))},
        automation_condition=DAILY,
        freshness_policy=DAILY_FRESHNESS,
    )


def build_memberships_asset(catalog: Catalog) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name="compute_memberships",
        specs=[
            dg.AssetSpec(
                MEMBERSHIPS,
                deps=[dg.AssetKey("profiles"), dg.AssetKey("raw_events")],
                description="One row per (date, segment, identity): the daily segment membership snapshot.",
                group_name="segments",
                kinds={"duckdb", "parquet"},
                automation_condition=DAILY,
                freshness_policy=DAILY_FRESHNESS,
            ),
            dg.AssetSpec(
                CHANGES,
                deps=[MEMBERSHIPS],
                description="Day-over-day membership changes (added/removed per segment), read by the syncs.",
                group_name="segments",
                kinds={"duckdb", "parquet"},
                automation_condition=DAILY,
            ),
            *[_segment_spec(seg) for seg in catalog.segments],
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "known_segments_and_identities",
                asset=MEMBERSHIPS,
                blocking=True,
                description="Memberships only reference segments in the catalog and identities in that day's profiles.",
            ),
        ],
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        can_subset=False,
    )
    def compute_memberships_asset(
        context: dg.AssetExecutionContext,
        config: MembershipsConfig,
        warehouse: WarehouseResource,
        segment_catalog: SegmentCatalogResource,
    ):
        wh = warehouse.get()
        runtime_catalog = segment_catalog.load()
        known_specs = set(context.selected_asset_keys)
        con = connect()
        problems: list[str] = []
        for day in partition_days(context):
            report = compute_memberships(con, wh, runtime_catalog, day, refresh_static=config.refresh_static)
            key = day.isoformat()
            stats = report.by_id()
            counts = {f"members/{s.segment_id}": s.member_count for s in report.stats}
            context.add_asset_metadata(
                {
                    "total_memberships": report.total_rows,
                    "segments_refreshed": sum(s.status == "refreshed" for s in report.stats),
                    "segments_frozen": sum(s.status == "frozen" for s in report.stats),
                    "segments_skipped": sum(s.status == "skipped" for s in report.stats),
                    **counts,
                    "summary": _summary_table(report.stats),
                    "path": dg.MetadataValue.path(str(wh.partition_path("memberships", day))),
                },
                asset_key=MEMBERSHIPS,
                partition_key=key,
            )
            context.add_asset_metadata(
                {
                    "added": sum(s.added for s in report.stats),
                    "removed": sum(s.removed for s in report.stats),
                    "compared_with": str(report.compared_with or "nothing (first day)"),
                    **{f"added/{s.segment_id}": s.added for s in report.stats},
                    **{f"removed/{s.segment_id}": s.removed for s in report.stats},
                    "path": dg.MetadataValue.path(str(wh.partition_path("membership_changes", day))),
                },
                asset_key=CHANGES,
                partition_key=key,
            )
            previews = _previews(con, wh, runtime_catalog, day, [s for s in stats if segment_key(s) in known_specs])
            for seg_id, seg_stats in stats.items():
                spec_key = segment_key(seg_id)
                if spec_key not in known_specs:
                    continue
                context.add_asset_metadata(
                    {
                        "member_count": seg_stats.member_count,
                        "added": seg_stats.added,
                        "removed": seg_stats.removed,
                        "status": seg_stats.status,
                        "frozen_on": str(seg_stats.frozen_on or ""),
                        # caption first, then the table: the UI lists entries in this order and shows
                        # a table inline from its first row (a long Markdown value opens in a dialog
                        # that scrolls to its end)
                        "preview_rows": preview_caption(seg_stats.member_count),
                        "preview": previews.get(seg_id) or _preview_table([("email", "string")], []),
                    },
                    asset_key=spec_key,
                    partition_key=key,
                )
            problems.extend(_integrity_problems(con, wh, runtime_catalog, day))
        stale = sorted(k.path[-1] for k in known_specs if k.path[0] == "segment" and k.path[-1] not in runtime_catalog.by_id())
        if stale:
            context.log.warning(f"segment asset(s) {stale} are no longer in the definitions file: reload the code location")
        # dataset first, then the per-segment assets that depend on it (topological order)
        yield dg.MaterializeResult(asset_key=MEMBERSHIPS)
        yield dg.MaterializeResult(asset_key=CHANGES)
        for spec_key in sorted(known_specs - {MEMBERSHIPS, CHANGES}, key=lambda k: k.path):
            if spec_key.path[-1] in runtime_catalog.by_id():
                yield dg.MaterializeResult(asset_key=spec_key)
        yield dg.AssetCheckResult(
            asset_key=MEMBERSHIPS,
            check_name="known_segments_and_identities",
            passed=not problems,
            metadata={"problems": dg.MetadataValue.json(problems[:50])},
        )

    return compute_memberships_asset


def _summary_table(stats) -> dg.TableMetadataValue:
    """Every segment of the day: a table (shown inline from its first row; a long Markdown value
    would open in a dialog scrolled to its end)."""
    columns = (("segment", "string"), ("name", "string"), ("type", "string"), ("status", "string"),
               ("members", "int"), ("added", "int"), ("removed", "int"))
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"segment": s.segment_id, "name": s.name, "type": s.type, "status": s.status,
                                 "members": s.member_count, "added": s.added, "removed": s.removed})
                 for s in stats],
        schema=dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in columns]),
    )


#: Columns after ``email`` in a member preview (a table shown inline in the asset page's metadata
#: column, so few): the profile fields the segment's rule reads (``Catalog.preview_fields``).
PREVIEW_FIELDS = 4
#: Model type -> Dagster table column type of a preview column.
_PREVIEW_TYPES = {"integer": "int", "number": "float", "boolean": "bool"}


def preview_caption(member_count: int) -> str:
    """What the preview shows, e.g. ``first 100 of 457 members, by email``."""
    if member_count == 0:
        return "no members"
    if member_count <= PREVIEW_ROWS:
        return f"all {member_count} member{'s' if member_count != 1 else ''}, by email"
    return f"first {PREVIEW_ROWS} of {member_count:,} members, by email"


def _preview_table(columns: list[tuple[str, str]], records: list[dg.TableRecord]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=records,
        schema=dg.TableSchema(columns=[dg.TableColumn(name, type_) for name, type_ in columns]),
    )


def _preview_value(value):
    """A profile value as a table cell: numbers and booleans as they are, money with 2 decimals,
    dates and timestamps in ISO 8601, a list as comma-separated text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _preview_columns(catalog: Catalog, segment_id: str) -> list[tuple[str, str]]:
    """``email`` and the fields that show why an identity is a member (from the rule and the model)."""
    types = catalog.model.profile_fields()
    fields = catalog.preview_fields(segment_id, PREVIEW_FIELDS)
    return [("email", "string"), *((f, _PREVIEW_TYPES.get(types[f], "string")) for f in fields)]


def _previews(con, wh: Warehouse, catalog: Catalog, day: dt.date, segment_ids: list[str]) -> dict[str, dg.TableMetadataValue]:
    """Tables of the first 100 members (by email, ascending) of each segment, with the profile
    fields its rule reads (:func:`_preview_columns`)."""
    if not segment_ids:
        return {}
    columns = {seg: _preview_columns(catalog, seg) for seg in segment_ids if seg in catalog.by_id()}
    fields = sorted({name for cols in columns.values() for name, _ in cols[1:]})
    select = "".join(f', p."{name}"' for name in fields)
    cur = con.execute(
        f"""
        SELECT m.segment_id, m.email{select}
        FROM (SELECT * FROM {wh.scan('memberships', days=[day])}
              QUALIFY row_number() OVER (PARTITION BY segment_id ORDER BY email) <= {PREVIEW_ROWS}) m
        LEFT JOIN {wh.scan('profiles', days=[day])} p USING (identity_id)
        ORDER BY m.segment_id, m.email
        """
    )
    records: dict[str, list[dg.TableRecord]] = {}
    for seg_id, email, *values in cur.fetchall():
        if seg_id not in columns:
            continue
        row = dict(zip(fields, values, strict=True))
        records.setdefault(seg_id, []).append(dg.TableRecord(
            {"email": email, **{name: _preview_value(row[name]) for name, _ in columns[seg_id][1:]}}
        ))
    return {seg: _preview_table(columns[seg], records.get(seg, [])) for seg in columns}


def _integrity_problems(con, wh: Warehouse, catalog: Catalog, day: dt.date) -> list[str]:
    known = ", ".join(sql_string(s) for s in catalog.by_id()) or "NULL"
    rows = con.execute(
        f"""
        SELECT 'unknown segment ' || segment_id, count(*) FROM {wh.scan('memberships', days=[day])}
        WHERE segment_id NOT IN ({known}) GROUP BY segment_id
        UNION ALL
        SELECT 'identity not in profiles', count(*) FROM {wh.scan('memberships', days=[day])} m
        ANTI JOIN {wh.scan('profiles', days=[day])} p USING (identity_id)
        HAVING count(*) > 0
        UNION ALL
        SELECT 'duplicate (segment, identity)', count(*) - count(DISTINCT (segment_id, identity_id))
        FROM {wh.scan('memberships', days=[day])}
        HAVING count(*) - count(DISTINCT (segment_id, identity_id)) > 0
        """
    ).fetchall()
    return [f"{day}: {what} ({n} rows)" for what, n in rows]


memberships_asset = build_memberships_asset(load_catalog(settings.segments_file()))
