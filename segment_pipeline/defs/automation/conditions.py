"""Declarative automation and freshness policies, attached by the asset definitions.

Which trigger drives what (docs/automation.md has the full table):

* the daily pipeline (ingestion -> profiles -> memberships/segments -> ``segment_feed_daily``)
  runs for yesterday's partition at ``SEGMENT_PIPELINE_DAILY_CRON`` (default ``0 3 * * *``, UTC)
  through :data:`DAILY`, an ``AutomationCondition.on_cron``: every asset of the chain is requested
  on the cron tick, downstream ones only once everything upstream has updated since that tick;
* ``segment_feed_daily`` also follows its inputs on any day (:data:`FEED`): when memberships or
  profiles of a day are rematerialized by a run that did not rewrite that day's feed (a manual
  materialization, a ``refresh_static`` run), the feed of that day is rewritten, but never while
  the inputs are being computed or when their blocking checks failed;
* new or changed landing files: the ``landing_zone_sensor`` (``sensors.py``);
* earlier days a later day's identity links attribute: the ``late_links_sensor`` (``sensors.py``);
* ESP syncs: their schedules in ``defs/syncs``, gated by ``sync_gate``.

No Dagster definitions live here (only condition and policy objects), so every asset module can
import this one without import cycles.
"""

import datetime as dt
import os

import dagster as dg

DAILY_CRON_ENV, DEFAULT_DAILY_CRON = "SEGMENT_PIPELINE_DAILY_CRON", "0 3 * * *"
TIMEZONE = "UTC"


def daily_cron() -> str:
    """When the daily pipeline and export run (UTC), overridable for a deployment."""
    return os.environ.get(DAILY_CRON_ENV, "").strip() or DEFAULT_DAILY_CRON


#: Every asset of the daily pipeline: yesterday's partition, once per cron tick, after its inputs.
DAILY = dg.AutomationCondition.on_cron(daily_cron(), TIMEZONE)

#: A day's feed is rewritten when its inputs changed outside a run that also wrote the feed.
FOLLOW_INPUTS = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("inputs of that day changed")

FEED = (DAILY | FOLLOW_INPUTS).with_label(f"daily at {daily_cron()} UTC, or when that day's inputs changed")

#: Memberships, segments and the daily export are rebuilt once a day: warn after 25 h, stale after 26 h.
DAILY_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26),
                                                 warn_window=dt.timedelta(hours=25))
#: Klaviyo syncs every 12 hours.
TWELVE_HOURLY_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=14),
                                                         warn_window=dt.timedelta(hours=13))
