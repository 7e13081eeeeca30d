"""The production deployment for real: a code server, the webserver and the daemon as three
processes (``deploy/production/workspace.yaml``) on the production instance
(``deploy/production/dagster.yaml``: PostgreSQL, step logs in moto's S3), a run of one day of the
daily job launched through GraphQL, and what it left in PostgreSQL and in the bucket.

PostgreSQL comes from ``segment_pipeline_tests/postgres.py`` (``.ci/run`` starts one; else a
throwaway cluster when the server is installed; else a skip, a failure in CI).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys

import pytest
from dagster._grpc.client import DagsterGrpcClient
from dagster_graphql import DagsterGraphQLClient

from segment_pipeline import settings
from segment_pipeline_tests.e2e.conftest import (
    PROJECT_ROOT,
    RUN_TIMEOUT,
    DagsterDev,
    artifacts_dir,
    server_env,
    start_dagster_dev,
    wait_for_run,
)
from segment_pipeline_tests.fakes.s3 import moto_s3_server
from segment_pipeline_tests.landing import SAMPLE_LANDING
from segment_pipeline_tests.postgres import postgres_or_skip
from segment_pipeline_tests.waiting import on_a_free_port, wait_for

pytestmark = pytest.mark.e2e

DAY = "2026-11-01"
DAILY_ASSETS = {"raw_profiles", "raw_events", "profiles", "memberships", "segment_feed_daily"}


@pytest.fixture(scope="module")
def postgres():
    with postgres_or_skip() as db:
        yield db


def start_code_server(cwd, env) -> DagsterDev:
    """``dagster code-server start`` for the code location, on a free port, serving once loaded."""
    def start(port: int) -> DagsterDev:
        server = DagsterDev([sys.executable, "-m", "dagster", "code-server", "start", "-h", "127.0.0.1",
                             "-p", str(port), "-m", "segment_pipeline.definitions",
                             "--location-name", "segment_pipeline"],
                            cwd, env, artifacts_dir() / "production_code_server.log", port).start()

        def serving() -> bool:
            if server.proc.poll() is not None:
                raise RuntimeError(f"code server exited with {server.proc.returncode}:\n{server.log_tail()}")
            try:  # listening yet? (gRPC logs every refused health check)
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError:
                return False
            # what `dagster api grpc-health-check` asks, without starting a process per poll
            return DagsterGrpcClient(port=port, host="127.0.0.1").health_check_query() == "SERVING"

        try:
            wait_for("the code server", serving, RUN_TIMEOUT, server.log_tail, interval=0.5)
        except BaseException:
            server.stop()
            raise
        return server

    return on_a_free_port(start)


@pytest.fixture(scope="module")
def moto_s3():
    with moto_s3_server() as s3:
        yield s3


def test_webserver_daemon_and_a_run_on_postgres_with_step_logs_in_s3(tmp_path, postgres, moto_s3):
    bucket, prefix = moto_s3.new_bucket("dagster-compute-logs"), "segment-pipeline/e2e"
    landing = tmp_path / "landing"
    for kind in ("profiles", "events"):  # fresh files: the landing sensor waits for them to settle
        shutil.copytree(SAMPLE_LANDING / kind / f"date={DAY}", landing / kind / f"date={DAY}")
    env = server_env(tmp_path, landing)
    home = tmp_path / "dagster_home"
    shutil.copyfile(settings.PRODUCTION_INSTANCE_TEMPLATE, home / "dagster.yaml")
    staging = tmp_path / "compute_log_staging"
    env.update({
        **postgres.dagster_env(),
        "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
        "DAGSTER_COMPUTE_LOGS_PREFIX": prefix,
        "DAGSTER_COMPUTE_LOGS_ENDPOINT_URL": moto_s3.endpoint_url,
        "DAGSTER_COMPUTE_LOGS_LOCAL_DIR": str(staging),
        # the run launched below is the only one: the landing sensor sees its files as still being written
        "SEGMENT_PIPELINE_LANDING_SETTLE_SECONDS": str(10 * 365 * 86400),
    })

    workspace = str(PROJECT_ROOT / "deploy" / "production" / "workspace.yaml")
    code_server = daemon = server = None
    try:
        # the three services of a deployment, each its own process, sharing only the instance
        code_server = start_code_server(tmp_path, env)
        env.update({"SEGMENT_PIPELINE_CODE_SERVER_HOST": "127.0.0.1",
                    "SEGMENT_PIPELINE_CODE_SERVER_PORT": str(code_server.port)})
        daemon = DagsterDev([sys.executable, "-m", "dagster._daemon", "run", "-w", workspace], tmp_path, env,
                            artifacts_dir() / "production_daemon.log", 0).start()

        def webserver(port: int) -> list[str]:
            return [sys.executable, "-m", "dagster_webserver", "-w", workspace, "-h", "127.0.0.1", "-p", str(port)]

        # ready: the code location loaded over gRPC, and every daemon healthy (heartbeats in PostgreSQL)
        server = start_dagster_dev(webserver, tmp_path, env, artifacts_dir() / "production_webserver.log")
        instance = server.graphql("{ instance { info runQueuingSupported runQueueConfig { maxConcurrentRuns } } }")
        assert instance["instance"]["runQueuingSupported"]  # the queued run coordinator, template limits
        assert instance["instance"]["runQueueConfig"]["maxConcurrentRuns"] == 4
        # the UI's instance page shows the configuration, never the password
        info = instance["instance"]["info"]
        for storage in ("run_storage: PostgresRunStorage", "event_log_storage: PostgresEventLogStorage",
                        "schedule_storage: PostgresScheduleStorage"):
            assert storage in info
        assert postgres.password not in info

        gql = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
        run_id = gql.submit_job_execution("daily_segments", repository_location_name="segment_pipeline",
                                          tags={"dagster/partition": DAY})
        assert wait_for_run(server, run_id) == "SUCCESS"

        # run storage: the run and its tags, in PostgreSQL
        (run_row,) = postgres.query("SELECT status, pipeline_name FROM runs WHERE run_id = %s", (run_id,))
        assert run_row == ("SUCCESS", "daily_segments")
        tags = dict(postgres.query("SELECT key, value FROM run_tags WHERE run_id = %s", (run_id,)))
        assert tags["dagster/partition"] == DAY
        # event-log storage: the run's events, with one materialization per daily asset for the day
        events = {kind for (kind,) in postgres.query(
            "SELECT DISTINCT dagster_event_type FROM event_logs WHERE run_id = %s", (run_id,))}
        # (run events keep their legacy names in storage: PIPELINE_START is RUN_START)
        assert {"PIPELINE_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION", "PIPELINE_SUCCESS"} <= events, events
        materialized = postgres.query(
            "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
            (run_id, "ASSET_MATERIALIZATION"))
        keys = {"/".join(json.loads(key)) for key, _ in materialized}
        assert keys >= DAILY_ASSETS
        assert {partition for _, partition in materialized} == {DAY}
        # schedule storage: the daemon's sensor ticks (the landing sensor skipping: files not settled)
        assert wait_for("sensor ticks in PostgreSQL", lambda: postgres.query("SELECT count(*) FROM job_ticks")[0][0],
                        RUN_TIMEOUT, server.log_tail, interval=1)
        # nothing of the instance in SQLite under DAGSTER_HOME
        assert not list(home.rglob("*.db"))
        assert not {"history", "schedules", "storage"} & {p.name for p in home.iterdir()}  # SQLite instance folders

        # compute logs: every step's stderr in the bucket, under the configured prefix
        steps = {step for (step,) in postgres.query(
            "SELECT DISTINCT step_key FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
            (run_id, "STEP_SUCCESS"))}
        assert steps

        def uploaded() -> list[str]:
            keys = moto_s3.keys(bucket, f"{prefix}/storage/{run_id}/compute_logs/")
            return keys if len([k for k in keys if k.endswith(".err")]) >= 1 else []

        keys = wait_for("compute logs in S3", uploaded, RUN_TIMEOUT, server.log_tail, interval=1)
        err_keys = [k for k in keys if k.endswith(".err")]
        err = b"".join(moto_s3.get(bucket, k) for k in err_keys).decode()
        for step in steps:
            assert step in err, f"no log of step {step} in s3://{bucket}/{prefix}: {keys}"

        # the UI shows a step log from the bucket once the local staging copy is gone
        shutil.rmtree(staging)
        log_key = err_keys[0][len(f"{prefix}/storage/"):-len(".err")].split("/")
        shown = server.graphql("query($key: [String!]!) { capturedLogs(logKey: $key) { stderr } }",
                               {"key": log_key})["capturedLogs"]["stderr"]
        assert shown and any(step in shown for step in steps)
    finally:
        for process in (server, daemon, code_server):
            if process is not None:
                process.stop()
    for process in (server, daemon, code_server):  # nor in any service's log
        assert postgres.password not in process.log_path.read_text(errors="replace"), process.log_path.name
