"""The production instance template (``deploy/production/dagster.yaml``) against the local one
(``deploy/dagster.yaml``): the same queue limits and operations settings, storage and step logs from
the environment only. Its end-to-end test (webserver, daemon and a run on PostgreSQL and S3) is
``segment_pipeline_tests/e2e/test_production_instance.py``."""

from __future__ import annotations

import re

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from segment_pipeline import settings

#: The settings only the production template has; every other one must equal the local template's.
PRODUCTION_ONLY = {"storage", "compute_logs"}

ENV = {
    "DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "6543", "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "s3cr3t-from-env",
    "DAGSTER_COMPUTE_LOGS_BUCKET": "logs-bucket", "DAGSTER_COMPUTE_LOGS_PREFIX": "dagster/prod",
    "DAGSTER_COMPUTE_LOGS_ENDPOINT_URL": "http://127.0.0.1:9", "DAGSTER_COMPUTE_LOGS_LOCAL_DIR": "staging",
}


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


def env_leaves(node, path=()):
    """(path, value) of every leaf below ``node``; an ``{env: NAME}`` mapping is one leaf."""
    if isinstance(node, dict) and set(node) != {"env"}:
        for key, value in node.items():
            yield from env_leaves(value, (*path, key))
    else:
        yield path, node


def test_production_template_keeps_the_local_queue_limits_and_operations_settings():
    local, production = load(settings.INSTANCE_TEMPLATE), load(settings.PRODUCTION_INSTANCE_TEMPLATE)
    assert set(production) - set(local) == PRODUCTION_ONLY
    for key in local:  # run_queue, concurrency (the tag limits), retries, monitoring, retention, ...
        assert production[key] == local[key], f"deploy/production/dagster.yaml: {key} differs from deploy/dagster.yaml"
    limits = {limit["key"] for limit in production["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert {"segment_export/segment_id", "segment_export/all", "segment_pipeline/pipeline",
            "segment_pipeline/sync"} <= limits


def test_production_template_reads_every_host_and_secret_from_the_environment():
    production = load(settings.PRODUCTION_INSTANCE_TEMPLATE)
    db = production["storage"]["postgres"]["postgres_db"]
    assert db == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"}, "db_name": {"env": "DAGSTER_PG_DB"},
        "username": {"env": "DAGSTER_PG_USERNAME"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "scheme": "postgresql+psycopg2"}  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
    logs = production["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    for path, value in env_leaves(logs["config"]):
        # where logs go and who may read them come from the environment; only behaviour is literal
        assert isinstance(value, dict | bool | int), f"compute_logs.config.{'.'.join(path)}"
    text = settings.PRODUCTION_INSTANCE_TEMPLATE.read_text()
    # no host of one machine (folders of one machine: segment_pipeline_tests/test_repository.py)
    assert not re.search(r"^[^#]*(localhost|127\.0\.0\.1|amazonaws\.com)", text, re.M)


def test_production_template_is_a_valid_dagster_instance_config(tmp_path, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster.yaml").write_text(settings.PRODUCTION_INSTANCE_TEMPLATE.read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # validates against Dagster's instance schema
    postgres = config["storage"]["postgres"]
    # one database behind the three storages, from the environment
    for storage in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        processed = process_config(storage.config_type(), postgres)
        assert processed.success, processed.errors
        db = processed.value["postgres_db"]
        assert (db["hostname"], db["port"], db["db_name"], db["password"]) == (
            "db.internal", 6543, "dagster", "s3cr3t-from-env")
    logs = process_config(S3ComputeLogManager.config_type(), config["compute_logs"]["config"])
    assert logs.success, logs.errors
    assert {k: logs.value[k] for k in ("bucket", "prefix", "endpoint_url", "local_dir")} == {
        "bucket": "logs-bucket", "prefix": "dagster/prod", "endpoint_url": "http://127.0.0.1:9",
        "local_dir": "staging"}


def test_production_template_names_a_missing_variable(tmp_path, monkeypatch):
    for name, value in ENV.items():
        if name != "DAGSTER_PG_PASSWORD":
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD", raising=False)
    (tmp_path / "dagster.yaml").write_text(settings.PRODUCTION_INSTANCE_TEMPLATE.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with pytest.raises(Exception, match="DAGSTER_PG_PASSWORD"):
        dg.DagsterInstance.get()
