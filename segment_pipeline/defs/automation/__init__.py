"""Automation and operations: what keeps the pipeline fresh without anyone clicking.

* ``conditions``: the daily cron (``SEGMENT_PIPELINE_DAILY_CRON``), the AutomationConditions and
  freshness policies the asset definitions carry;
* ``sensors``: the landing-zone sensor, the automation condition sensor that evaluates the daily
  conditions, and the run-failure alert;
* ``sync_gate``: keeps the scheduled ESP syncs from sending memberships that failed a check.

See docs/automation.md for which trigger drives what.
"""
