"""How the API starts ``segment_export_job`` runs: the launcher seam (the only Dagster-aware part).

Two real implementations, same interface (:class:`Launcher`):

* :class:`GraphQLLauncher` (``SEGMENT_PIPELINE_DAGSTER_URL`` set, e.g. ``http://127.0.0.1:3000``):
  submits the run to a running Dagster webserver (``dg dev`` / ``dagster dev``) with
  ``DagsterGraphQLClient``; it goes through that instance's run queue (``tag_concurrency_limits``
  on the export tags apply) and run launcher, and the daemon starts it. Production choice.
* :class:`InstanceLauncher` (default): the run is recorded in the Dagster instance of
  ``DAGSTER_HOME`` (so it shows in the UI of that instance) and executed in a worker thread of
  the API process with ``execute_in_process``, using the job's resources built from the same
  environment as the code location. No webserver or daemon needed: single-machine setups, tests.

Both ask the instance (directly or over GraphQL) for run status and for runs in progress with a
given tag; the export service (:mod:`segment_pipeline.core.api_exports`) uses that for the 409.
"""

from __future__ import annotations

import threading
import urllib.parse
import uuid
from typing import Protocol

IN_PROGRESS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]


class Launcher(Protocol):
    name: str

    def launch(self, run_config: dict, tags: dict[str, str]) -> str:
        """Start (or queue) a run; return its run id."""

    def run_status(self, run_id: str) -> tuple[str | None, str]:
        """(status name such as ``STARTED``/``SUCCESS``/``FAILURE``, or None if no such run; error text)."""

    def runs_in_progress(self, tags: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        """(run id, tags) of runs not finished yet carrying all of ``tags``."""


class InstanceLauncher:
    name = "instance"

    def __init__(self, instance=None):
        import dagster as dg

        self.instance = instance or dg.DagsterInstance.get()
        self._job = None
        self._job_lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def job(self):
        with self._job_lock:
            if self._job is None:
                import dagster as dg

                from segment_pipeline import settings
                from segment_pipeline.defs.exports.assets import segment_export, segment_export_job
                from segment_pipeline.defs.exports.resources import exports_resource_from_env
                from segment_pipeline.defs.resources import WarehouseResource

                defs = dg.Definitions(
                    assets=[segment_export],
                    jobs=[segment_export_job],
                    resources={
                        "warehouse": WarehouseResource(root=settings.warehouse_root()),
                        "exports": exports_resource_from_env(),
                    },
                )
                self._job = defs.resolve_job_def("segment_export_job")
            return self._job

    def launch(self, run_config: dict, tags: dict[str, str]) -> str:
        job = self.job()
        run_id = str(uuid.uuid4())

        def execute() -> None:
            job.execute_in_process(
                run_config=run_config, instance=self.instance, tags=tags, run_id=run_id, raise_on_error=False
            )

        thread = threading.Thread(target=execute, name=f"segment-export-{run_id[:8]}", daemon=True)
        thread.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        return run_id

    def run_status(self, run_id: str) -> tuple[str | None, str]:
        import dagster as dg

        run = self.instance.get_run_by_id(run_id)
        if run is None:
            return None, ""
        error = ""
        if run.status == dg.DagsterRunStatus.FAILURE:
            for record in self.instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1
            ).records:
                data = record.event_log_entry.dagster_event.event_specific_data
                err = getattr(data, "error", None)
                if err is not None:
                    error = (getattr(err, "message", "") or "").strip().splitlines()[0][:500]
        return run.status.value, error

    def runs_in_progress(self, tags: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        import dagster as dg

        runs = self.instance.get_runs(
            filters=dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus(s) for s in IN_PROGRESS])
        )
        return [(r.run_id, dict(r.tags)) for r in runs]

    def join(self, timeout: float | None = None) -> None:
        for thread in list(self.threads):
            thread.join(timeout)


_RUNS_QUERY = """
query InProgress($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId tags { key value } } }
    ... on PythonError { message }
  }
}
"""


class GraphQLLauncher:
    name = "graphql"

    def __init__(self, url: str, location: str = "segment_pipeline", repository: str = "__repository__"):
        from dagster_graphql import DagsterGraphQLClient

        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"SEGMENT_PIPELINE_DAGSTER_URL must be an http(s) URL, got {url!r}")
        self.client = DagsterGraphQLClient(
            parsed.hostname, port_number=parsed.port, use_https=parsed.scheme == "https",
            path_prefix=parsed.path.rstrip("/"), timeout=30,
        )
        self.location = location
        self.repository = repository

    def launch(self, run_config: dict, tags: dict[str, str]) -> str:
        return self.client.submit_job_execution(
            "segment_export_job", repository_location_name=self.location, repository_name=self.repository,
            run_config=run_config, tags=tags,
        )

    def run_status(self, run_id: str) -> tuple[str | None, str]:
        from dagster_graphql import DagsterGraphQLClientError

        try:
            return self.client.get_run_status(run_id).value, ""
        except DagsterGraphQLClientError as exc:
            if "RunNotFoundError" in str(exc):
                return None, ""
            raise

    def runs_in_progress(self, tags: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        variables = {"filter": {"tags": [{"key": k, "value": v} for k, v in tags.items()], "statuses": IN_PROGRESS}}
        data = self.client._execute(_RUNS_QUERY, variables)["runsOrError"]
        if data["__typename"] != "Runs":
            raise RuntimeError(f"Dagster GraphQL runs query failed: {data.get('message', data['__typename'])}")
        return [(r["runId"], {t["key"]: t["value"] for t in r["tags"]}) for r in data["results"]]


def launcher_from_settings(dagster_url: str | None, location: str = "segment_pipeline") -> Launcher:
    if dagster_url:
        return GraphQLLauncher(dagster_url, location)
    return InstanceLauncher()
