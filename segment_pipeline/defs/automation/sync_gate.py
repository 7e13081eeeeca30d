"""Keep scheduled ESP syncs from sending memberships that failed a check.

The syncs send the latest memberships day. ``known_segments_and_identities`` is a blocking check
on ``memberships``: in a run that materializes both, Dagster itself stops the syncs when it fails.
The syncs normally run on their own schedules though, so each scheduled tick first looks at the
latest evaluation of the memberships checks and skips (with the reason, shown on the schedule's
tick in the UI) while memberships are being recomputed or when the latest completed check failed.
The next tick after a passing run syncs again.
"""

import dagster as dg

MEMBERSHIPS = dg.AssetKey("memberships")
GATING_CHECKS = (dg.AssetCheckKey(MEMBERSHIPS, "known_segments_and_identities"),)
SYNC_TAG = "segment_pipeline/sync"
HISTORY = 20


def memberships_gate(instance: dg.DagsterInstance) -> str | None:
    """None when the syncs may send memberships; otherwise why they must wait."""
    for check_key in GATING_CHECKS:
        records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=HISTORY)
        for record in records:  # newest first
            if record.status.value == "PLANNED":
                run = instance.get_run_by_id(record.run_id)
                if run is not None and not run.is_finished:
                    return f"memberships are being recomputed by run {record.run_id}"
                continue  # that run ended before the check ran: look at the one before
            if record.status.value == "FAILED":
                return (
                    f"check {check_key.name} on memberships failed in run {record.run_id}: "
                    "fix the data and re-run memberships; syncs resume on the next tick after it passes"
                )
            break  # latest completed evaluation passed
    return None


def gated_sync(integration: str):
    """A schedule evaluation function: one sync run per tick, unless the gate says wait."""

    def evaluate(context: dg.ScheduleEvaluationContext):
        reason = memberships_gate(context.instance)
        if reason:
            context.log.warning(f"{integration} sync skipped: {reason}")
            return dg.SkipReason(f"{integration} sync skipped: {reason}")
        tick = context.scheduled_execution_time
        return dg.RunRequest(run_key=f"{integration}:{tick.isoformat() if tick else 'manual'}",
                             tags={SYNC_TAG: integration})

    return evaluate
