"""How the API starts ``segment_export_job`` runs: the launcher seam (the only Dagster-aware part).

The API never executes a run in its own process (running Dagster runs on a web server's threads
deadlocked it on logging locks, issue 10). It only *submits* runs; a separate Dagster process runs
them. Two implementations, same interface (:class:`Launcher`):

* :class:`QueueLauncher` (default): the run is created in the Dagster instance of ``DAGSTER_HOME``
  and submitted to that instance's **run queue** (``instance.submit_run`` with the
  ``QueuedRunCoordinator``, the default, as in the repository's ``deploy/dagster.yaml`` template). The
  daemon (``dagster-daemon run``, started by ``dg dev`` / ``dagster dev``) dequeues it within the
  tag concurrency limits ``segment_export/segment_id`` and ``segment_export/all`` and launches it in
  its own process from its code location of the same name (``SEGMENT_PIPELINE_DAGSTER_LOCATION``,
  default ``segment_pipeline``). The API loads the code location's *definitions* (not runs) once,
  in-process, to build the run's job and execution-plan snapshots, exactly as ``dagster job launch``
  does. Without a running daemon runs stay ``QUEUED``; :meth:`QueueLauncher.daemon_problem` says so.
* :class:`GraphQLLauncher` (``SEGMENT_PIPELINE_DAGSTER_URL`` set, e.g. ``http://127.0.0.1:3000``):
  submits the run to a running Dagster webserver with ``DagsterGraphQLClient``; it goes through
  that instance's run queue the same way.

Both ask the instance (directly or over GraphQL) for run status and for runs in progress with a
given tag (the export service, :mod:`segment_pipeline.core.api_exports`, uses that for 409/429),
and can mark a run that provably died (or never started) as ended, so it frees its slots.
"""

from __future__ import annotations

import os
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Protocol

IN_PROGRESS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
JOB_NAME = "segment_export_job"
DEFINITIONS_MODULE = "segment_pipeline.definitions"
REPOSITORY = "__repository__"


class LauncherConfigError(RuntimeError):
    """The Dagster instance cannot take runs from the API (e.g. it does not queue runs)."""


@dataclass
class RunInfo:
    """A run in progress: id, tags, status name and creation time (unix seconds)."""

    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "QUEUED"
    created_at: float = 0.0


class Launcher(Protocol):
    name: str

    def launch(self, run_config: dict, tags: dict[str, str]) -> str:
        """Submit a run to the queue; return its run id (it has not started yet)."""

    def run_status(self, run_id: str) -> tuple[str | None, str]:
        """(status name such as ``QUEUED``/``STARTED``/``SUCCESS``/``FAILURE``, or None if no such run; error text)."""

    def runs_in_progress(self, tags: dict[str, str]) -> list[RunInfo]:
        """Runs not finished yet carrying all of ``tags``."""

    def mark_failed(self, run_id: str, message: str) -> None:
        """End a run that provably died or never started (its status no longer counts as in progress)."""


class QueueLauncher:
    """Creates runs in the instance and submits them to its run queue (see the module docstring)."""

    name = "queue"

    def __init__(self, instance=None, location: str = "segment_pipeline", module: str = DEFINITIONS_MODULE):
        import dagster as dg
        from dagster._core.errors import DagsterHomeNotSetError
        from dagster._core.run_coordinator import QueuedRunCoordinator

        if instance is None:
            try:
                instance = dg.DagsterInstance.get()
            except DagsterHomeNotSetError:
                raise LauncherConfigError(
                    "DAGSTER_HOME is not set: set it to the Dagster instance whose daemon runs the exports "
                    "(e.g. the .dagster_home of `segment-pipeline demo` / `dg dev`), or set SEGMENT_PIPELINE_DAGSTER_URL"
                ) from None
        if instance.is_ephemeral:
            raise LauncherConfigError("the Dagster instance is ephemeral: no daemon could ever start its queued runs")
        self.instance = instance
        coordinator = self.instance.run_coordinator
        if not isinstance(coordinator, QueuedRunCoordinator):
            raise LauncherConfigError(
                f"the Dagster instance at DAGSTER_HOME uses {type(coordinator).__name__}; the segment API only "
                "queues runs (the daemon starts them), so configure the QueuedRunCoordinator (the default; see "
                "the repository's deploy/dagster.yaml) or set SEGMENT_PIPELINE_DAGSTER_URL to launch through a webserver"
            )
        self.location = location
        self.module = module
        self._context = None
        self._lock = threading.Lock()

    def _workspace(self):
        """A request context over the code location, loaded in-process once (definitions only)."""
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

        with self._lock:
            if self._context is None:
                origin = InProcessCodeLocationOrigin(
                    LoadableTargetOrigin(executable_path=sys.executable, module_name=self.module,
                                         working_directory=os.getcwd()),
                    location_name=self.location,
                )
                self._context = WorkspaceProcessContext(self.instance, InProcessWorkspaceLoadTarget(origin))
            return self._context.create_request_context()

    def launch(self, run_config: dict, tags: dict[str, str]) -> str:
        from dagster._core.definitions.selector import JobSubsetSelector
        from dagster._utils.tags import normalize_tags

        workspace = self._workspace()
        error = workspace.get_code_location_error(self.location)
        if error is not None:
            raise RuntimeError(f"code location {self.location!r} failed to load: {error.message.strip()[:500]}")
        location = workspace.get_code_location(self.location)
        repository = location.get_repository(REPOSITORY)
        remote_job = location.get_job(JobSubsetSelector(
            location_name=self.location, repository_name=repository.name, job_name=JOB_NAME, op_selection=None,
        ))
        plan = location.get_execution_plan(
            remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        ).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=JOB_NAME, run_id=None, run_config=run_config,
            resolved_op_selection=remote_job.resolved_op_selection, step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None, status=None, root_run_id=None, parent_run_id=None,
            tags=normalize_tags({**remote_job.tags, **tags}), job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan, parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=None, asset_check_selection=None, asset_graph=repository.asset_graph,
        )
        self.instance.submit_run(run.run_id, workspace)
        return run.run_id

    def run_status(self, run_id: str) -> tuple[str | None, str]:
        import dagster as dg

        run = self.instance.get_run_by_id(run_id)
        if run is None:
            return None, ""
        error = ""
        if run.status == dg.DagsterRunStatus.FAILURE:
            for event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
                for record in self.instance.get_records_for_run(run_id, of_type=event_type, limit=1).records:
                    event = record.event_log_entry.dagster_event
                    err = getattr(event.event_specific_data, "error", None) if event else None
                    while err is not None and getattr(err, "cause", None) is not None:
                        err = err.cause  # the user-facing reason, not Dagster's "error in op" wrapper
                    text = (getattr(err, "message", None) or (event.message if event else "") or "").strip()
                    error = text.splitlines()[0][:500] if text else ""
                if error:
                    break
        return run.status.value, error

    def runs_in_progress(self, tags: dict[str, str]) -> list[RunInfo]:
        import dagster as dg

        records = self.instance.get_run_records(
            filters=dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus(s) for s in IN_PROGRESS])
        )
        return [
            RunInfo(r.dagster_run.run_id, dict(r.dagster_run.tags), r.dagster_run.status.value,
                    r.create_timestamp.timestamp())
            for r in records
        ]

    def mark_failed(self, run_id: str, message: str) -> None:
        run = self.instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self.instance.report_run_failed(run, message)

    def daemon_problem(self) -> str:
        """Why queued runs would not start (no healthy run-queue daemon), or "" when they will."""
        try:
            from dagster._daemon.controller import get_daemon_statuses

            status = get_daemon_statuses(self.instance, ["QUEUED_RUN_COORDINATOR"], ignore_errors=True)
            healthy = status["QUEUED_RUN_COORDINATOR"].healthy
        except Exception:  # noqa: BLE001 - a diagnostic only
            return ""
        if healthy is False:
            return ("no Dagster daemon is running for this instance: the export stays queued until one starts "
                    "(`dagster-daemon run`, or `dg dev`)")
        return ""

    def close(self) -> None:
        with self._lock:
            if self._context is not None:
                self._context.__exit__(None, None, None)
                self._context = None


_RUNS_QUERY = """
query InProgress($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status creationTime tags { key value } } }
    ... on PythonError { message }
  }
}
"""

_MARK_CANCELED = """
mutation MarkEnded($runId: String!) {
  terminateRun(runId: $runId, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) { __typename }
}
"""


class GraphQLLauncher:
    name = "graphql"

    def __init__(self, url: str, location: str = "segment_pipeline", repository: str = REPOSITORY):
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
            JOB_NAME, repository_location_name=self.location, repository_name=self.repository,
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

    def runs_in_progress(self, tags: dict[str, str]) -> list[RunInfo]:
        variables = {"filter": {"tags": [{"key": k, "value": v} for k, v in tags.items()], "statuses": IN_PROGRESS}}
        data = self.client._execute(_RUNS_QUERY, variables)["runsOrError"]
        if data["__typename"] != "Runs":
            raise RuntimeError(f"Dagster GraphQL runs query failed: {data.get('message', data['__typename'])}")
        return [
            RunInfo(r["runId"], {t["key"]: t["value"] for t in r["tags"]}, r["status"], float(r["creationTime"]))
            for r in data["results"]
        ]

    def mark_failed(self, run_id: str, message: str) -> None:
        # GraphQL has no "mark failed": the closest is ending it as canceled (the API's record keeps the reason)
        self.client._execute(_MARK_CANCELED, {"runId": run_id})

    def daemon_problem(self) -> str:
        return ""

    def close(self) -> None:
        pass


def launcher_from_settings(dagster_url: str | None, location: str = "segment_pipeline") -> Launcher:
    if dagster_url:
        return GraphQLLauncher(dagster_url, location)
    return QueueLauncher(location=location)
