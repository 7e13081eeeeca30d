"""Deletion requests delivered as landing files (a ``kind: deletion_requests`` source), applied daily.

Every request file of every ``deletion_requests`` source, of the run's days and of any earlier
day (a file that landed late in an earlier day's folder is read by the next run), is read once per
version (:meth:`~segment_pipeline.core.privacy.ledger.Ledger.file_recorded`): its valid rows are
recorded as requests, its invalid rows quarantined in the ledger (file, line and reason, never the
value: :meth:`~segment_pipeline.core.privacy.ledger.Ledger.rejects`) and counted. Then
:func:`segment_pipeline.core.privacy.forget.forget`, the code ``segment-pipeline forget`` runs,
removes every open request from the warehouse, the exports and the identity index. A run with
quarantined rows fails its check ``request_rows_valid`` (ERROR, not blocking) *after* all of
that, naming the files and lines, so the valid requests (and the day's ingestion) are never held
back by a bad one. Metadata counts requests, rejects and what was rewritten, never an
address. A run with no file still finishes requests a killed run left open.

``raw_profiles`` and ``raw_events`` depend on this asset for the same day, so the daily run
applies the day's requests before it ingests the day.
"""

from pathlib import Path

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.ingest import landing_files
from segment_pipeline.core.privacy.forget import forget, read_request_rows
from segment_pipeline.core.privacy.ledger import Ledger
from segment_pipeline.core.sources import load_sources
from segment_pipeline.core.warehouse import as_date
from segment_pipeline.defs.automation.conditions import DAILY
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.resources import LandingZoneResource, WarehouseResource

#: How many quarantined rows the check names (all are in the ledger).
NAMED_REJECTS = 10
#: The check that fails (not blocking: the valid requests are applied, ingestion goes on) when a
#: request file had rows that are not a valid address.
REJECTS_CHECK = "request_rows_valid"


def request_days(landing_root: Path, source: str, until: str) -> list[str]:
    """The days (``YYYY-MM-DD``) up to ``until`` that have a folder of ``source``, ascending."""
    days = []
    folder = landing_root / source
    for sub in sorted(folder.glob("date=*")) if folder.is_dir() else []:
        day = sub.name.removeprefix("date=")
        try:
            as_date(day)
        except ValueError:
            continue
        if sub.is_dir() and day <= until:
            days.append(day)
    return days


@dg.asset(
    name="deletion_requests",
    description="Deletion requests (GDPR Art. 17 / CCPA) from the landing files of deletion_requests sources: "
                "recorded in the ledger (hash only) and removed from every warehouse and export file.",
    group_name="privacy",
    kinds={"duckdb", "parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAILY,
    check_specs=[dg.AssetCheckSpec(REJECTS_CHECK, asset="deletion_requests",
                                   description="Every row of the request files read is a valid address "
                                               "(quarantined rows: file, line and reason, in the ledger).")],
)
def deletion_requests(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                      landing: LandingZoneResource, exports: ExportsResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    declared = load_sources(settings.sources_file()).sources
    names = sorted(n for n, s in declared.items() if s.kind == "deletion_requests")
    until = max(partition_days(context)).isoformat()
    per_source: dict[str, int] = {}
    rejected: list[str] = []
    files_read = 0
    ledger = Ledger(wh.root)
    root = Path(landing.root)
    for name in names:
        for day in request_days(root, name, until):
            for path in landing_files(root, name, day, declared[name].format):
                key = path.relative_to(root).as_posix()
                st = path.stat()
                version = f"{st.st_size}:{st.st_mtime_ns}"
                if ledger.file_recorded(key, version):
                    continue
                emails, rejects = read_request_rows(path)
                recorded = ledger.request(emails, f"landing:{name}") if emails else []
                ledger.record_file(key, version, len(recorded), rejects)
                files_read += 1
                per_source[name] = per_source.get(name, 0) + len(recorded)
                rejected += [f"{key}: {'line ' + str(n) + ': ' if n else ''}{reason}" for n, reason in rejects]
    result = forget(wh.root, exports.storage(), log=context.log.info)
    metadata = {**result.summary(), "requests_per_source": dg.MetadataValue.json(per_source),
                "request_files_read": files_read, "request_rows_quarantined": len(rejected),
                "sources": dg.MetadataValue.json(names)}
    named = "; ".join(rejected[:NAMED_REJECTS]) + ("; ..." if len(rejected) > NAMED_REJECTS else "")
    if rejected:
        context.log.error(f"{len(rejected)} deletion request row(s) quarantined (the valid ones were recorded and "
                          f"applied; fix and re-deliver them, or pass them to `segment-pipeline forget`): {named}")
    check = dg.AssetCheckResult(
        check_name=REJECTS_CHECK, passed=not rejected, severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(rejected)} request row(s) quarantined: {named}" if rejected else None,
        metadata={"request_rows_quarantined": len(rejected), "rows": dg.MetadataValue.json(rejected[:NAMED_REJECTS])})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
