"""``segment-pipeline demo``: the daily pipeline on the shipped sample, as one Dagster run, told briefly.

What it does, in order:

1. finds the sample's days in the landing zone (``<landing>/events/date=YYYY-MM-DD``);
2. prepares the Dagster instance in ``DAGSTER_HOME`` (default ``.dagster_home`` in the project):
   copies the instance template ``deploy/dagster.yaml`` there when it has none;
3. closes the daily partitions at the sample's last day (``SEGMENT_PIPELINE_END_DATE`` in the
   project's ``.env``, which ``dg dev`` and ``dagster dev`` load), so the UI shows the sample's days
   as materialized instead of every day since as "missing" (see :func:`pin_partitions`);
4. runs the ``daily_segments`` job for that range as **one** run recorded in that instance (the UI
   shows it, and the landing sensor knows its files are processed), with Dagster's own console
   log off (``--verbose`` shows it);
5. prints one line per stage as it finishes, then a summary with counts (:class:`Summary`): days,
   identities, segments and members, quarantined rows, files written, where they are, and the
   command that opens the UI.

Output shape (one line per stage; counts are the run's materialization metadata)::

      [1/5] ingest_events        14 days: 9,114 event rows valid, 34 quarantined  (4.9s)
      ...
      [5/5] segment_feed_daily   14 days: 14 feed files, 3,000 identities in the file of 2026-11-14  (1.9s)

    Done in 35s: run 3dfe814e (daily_segments, 2026-11-01...2026-11-14) succeeded.
      days           14 (2026-11-01 .. 2026-11-14)
      identities     3,000 on 2026-11-14
      ...

A failed stage prints ``FAILED``, and after the run its error (innermost cause, which names the
file, row or segment) and the run id to open in the UI; the exit code is then 1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from segment_pipeline import settings

#: The steps of the ``daily_segments`` job, in execution order, as the demo reports them.
STAGES = ("ingest_profiles", "ingest_events", "profiles", "compute_memberships", "segment_feed_daily")
DEMO_TAG = "segment_pipeline/demo"
END_DATE_ENV = "SEGMENT_PIPELINE_END_DATE"
ENV_FILE_NOTE = "# written by `segment-pipeline demo`: partitions end at the sample's last day; delete for live data"


#: The shipped examples besides the default (data/): name -> folder under the project.
EXAMPLES = {"beauty_shop": "examples/beauty_shop"}


def use_example(name: str) -> list[str]:
    """Point this process at the shipped example ``name`` (``examples/<name>/``): its model, sources,
    segments and landing files, a warehouse and export folder of its own inside that folder, and
    its own Dagster instance (``examples/<name>/.dagster_home``), all gitignored; its own privacy
    file and no destination field mappings (``SEGMENT_PIPELINE_DESTINATIONS=none``), so nothing of the
    apparel demo's ``data/`` applies. A variable already set in the environment is kept. The partitions end at the sample's last day.

    The settings are also written to ``examples/<name>/.env``, which ``dagster dev`` loads when
    started from that folder (:func:`example_ui_command`), so the UI shows the example's data and
    runs; the project's own ``.env`` is left to the default demo. Returns the ``NAME=value`` lines.
    """
    folder = settings.base_dir() / EXAMPLES[name]
    wanted = {
        "SEGMENT_PIPELINE_MODEL": folder / "model.yaml",
        "SEGMENT_PIPELINE_SOURCES": folder / "sources.yaml",
        "SEGMENT_PIPELINE_SEGMENTS": folder / "segments.yaml",
        "SEGMENT_PIPELINE_LANDING": folder / "landing",
        "SEGMENT_PIPELINE_WAREHOUSE": folder / "warehouse",
        "SEGMENT_PIPELINE_EXPORT_DIR": folder / "exports",
        "SEGMENT_PIPELINE_PRIVACY": folder / "privacy.yaml",  # its consent gates, not the apparel demo's file
        # no field mappings (segment names only): "none" is settings.NO_FILE, never the apparel demo's file
        "SEGMENT_PIPELINE_DESTINATIONS": settings.NO_FILE,
    }
    for var, value in wanted.items():
        os.environ.setdefault(var, str(value))
    # its own Dagster instance: the apparel demo's runs and the example's never share asset history
    os.environ.setdefault("DAGSTER_HOME", str(folder / ".dagster_home"))
    days = sample_days(os.environ["SEGMENT_PIPELINE_LANDING"])
    if days:
        os.environ.setdefault(END_DATE_ENV, days[-1])
    names = [var for var in [*wanted, END_DATE_ENV] if var in os.environ]
    env_file = folder / ".env"
    tmp = env_file.with_name(f".env.{os.getpid()}.tmp")
    tmp.write_text(f"# written by `segment-pipeline demo --example {name}`: read by `dagster dev` started here\n"
                   + "".join(f"{var}={os.environ[var]}\n" for var in names))
    os.replace(tmp, env_file)
    return [f"{var}={_rel(os.environ[var])}" for var in names]


def example_ui_command(name: str) -> str:
    """The command that opens the UI on an example's instance and data (its ``.env`` is loaded by
    ``dagster dev`` from the example's folder; ``dg dev`` needs the project's pyproject)."""
    folder = settings.base_dir() / EXAMPLES[name]
    import shlex

    home = Path(os.environ.get("DAGSTER_HOME") or folder / ".dagster_home").resolve()
    try:  # after the cd, $PWD is the example's folder
        shown = f"$PWD/{home.relative_to(folder.resolve())}"
    except ValueError:
        shown = shlex.quote(str(home))
    return f"cd {_rel(folder)} && DAGSTER_HOME={shown} dagster dev -m segment_pipeline.definitions"


def sample_days(landing_root: str | Path) -> list[str]:
    """The days of the landing zone (``YYYY-MM-DD``), from the day folders of its sources
    (``<landing>/<source>/date=YYYY-MM-DD``)."""
    days = set()
    for kind in sorted(p.name for p in Path(landing_root).glob("*") if p.is_dir()):
        for path in (Path(landing_root) / kind).glob("date=*"):
            try:
                days.add(dt.date.fromisoformat(path.name[5:]).isoformat())
            except ValueError:
                continue
    return sorted(days)


def prepare_instance(home: Path) -> str | None:
    """Create ``home`` (``0700``: Dagster's event log there holds the member previews, i.e. emails) and
    copy the instance template into it when it has no ``dagster.yaml``.
    Returns a line to print when it copied or when ``home`` is readable by others, else ``None``."""
    from segment_pipeline.core.atomic import private_mkdir

    private_mkdir(home)
    target = home / "dagster.yaml"
    if settings.INSTANCE_TEMPLATE.is_file() and not target.exists():
        shutil.copyfile(settings.INSTANCE_TEMPLATE, target)
        return f"instance: {_rel(home)} (settings copied from {_rel(settings.INSTANCE_TEMPLATE)})"
    if home.stat().st_mode & 0o077:
        return (f"instance: {_rel(home)} is readable by other users and its run history holds member emails: "
                f"chmod 700 {_rel(home)}")
    return None


class PartitionsClosed(Exception):
    """The days to run lie after ``SEGMENT_PIPELINE_END_DATE``."""


def pin_partitions(env_file: Path, last_day: str) -> str:
    """Set ``SEGMENT_PIPELINE_END_DATE=<last_day>`` in ``env_file`` (the project's ``.env``) and in
    this process, and say what was done.

    Why: daily partitions run through yesterday, so a two-week sample seen weeks later shows most
    partitions "missing", and the gap grows every day. Materializing the gap would make the demo
    slower every day; closing the partitions at the sample's last day makes the first view show
    exactly what was run. ``dg dev`` / ``dagster dev`` read ``.env`` from the project folder, so the
    UI sees the same partitions. A value already set (environment or ``.env``) is kept, never
    overwritten; a live deployment leaves the variable unset.
    """
    current = os.environ.get(END_DATE_ENV)
    lines = env_file.read_text().splitlines() if env_file.is_file() else []
    in_file = next((ln.split("=", 1)[1].strip() for ln in lines if ln.strip().startswith(f"{END_DATE_ENV}=")), None)
    if current or in_file:
        value = current or in_file
        os.environ[END_DATE_ENV] = value
        if value < last_day:
            raise PartitionsClosed(f"partitions end at {END_DATE_ENV}={value} (set in the environment or "
                                   f"{_rel(env_file)}), before {last_day}: raise or remove it to run these days")
        return f"partitions: end at {END_DATE_ENV}={value} (already set)"
    tmp = env_file.with_name(f".{env_file.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join([*lines, ENV_FILE_NOTE, f"{END_DATE_ENV}={last_day}"]) + "\n")
    os.replace(tmp, env_file)
    os.environ[END_DATE_ENV] = last_day
    return f"partitions: the sample's days only ({END_DATE_ENV}={last_day} written to {_rel(env_file)}, read by dg dev)"


# -- the run -------------------------------------------------------------------------------------------


def daily_segments_job():
    """The ``daily_segments`` job of the code location (module level: reconstructable by Dagster)."""
    from segment_pipeline.definitions import defs

    return defs().resolve_job_def("daily_segments")


@dataclasses.dataclass
class StageProgress:
    name: str
    started: float | None = None
    finished: float | None = None
    failed: str | None = None
    metadata: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)  # asset -> day -> values


class RunWatcher:
    """Follows one run's events in the instance (the same records the UI shows) and reports each
    stage when it finishes. Runs on a thread while the run executes in the main thread."""

    def __init__(self, instance, home_tag: str, out: TextIO, interval: float = 0.3):
        # one instance object for the run and the watcher: its storage serializes the creation of
        # SQLite databases (two instance objects on a fresh DAGSTER_HOME race to create the schema)
        self.instance, self.tag, self.out, self.interval = instance, home_tag, out, interval
        self.stages = {name: StageProgress(name) for name in STAGES}
        self.run_id: str | None = None
        self.reported = 0
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._cursor: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-progress", daemon=True)

    def start(self) -> RunWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following and read whatever is left: every stage of a finished run is reported,
        even if the thread missed events or hit an error."""
        self._done.set()
        self._thread.join()
        with self._lock:
            self.poll(self.instance)

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                with self._lock:
                    self.poll(self.instance)
            except Exception as exc:  # e.g. SQLite busy while the run writes: try again next time
                self.errors.append(exc)
            self._done.wait(self.interval)

    def poll(self, instance) -> None:
        import dagster as dg

        if self.run_id is None:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={DEMO_TAG: self.tag}), limit=1)
            if not runs:
                return
            self.run_id = runs[0].run_id
        types = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                 dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.ASSET_MATERIALIZATION}
        while True:
            conn = instance.get_records_for_run(self.run_id, cursor=self._cursor, of_type=types, limit=500)
            for record in conn.records:
                self._handle(record.event_log_entry)
            self._cursor = conn.cursor
            if not conn.has_more:
                return

    def _handle(self, entry) -> None:
        event = entry.dagster_event
        if event is None or event.step_key not in self.stages:
            return
        stage = self.stages[event.step_key]
        kind = event.event_type_value
        if kind == "STEP_START":
            stage.started = entry.timestamp
        elif kind == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            values = {k: v.value for k, v in mat.metadata.items()}
            stage.metadata.setdefault(mat.asset_key.to_user_string(), {})[mat.partition or ""] = values
        elif kind == "STEP_SUCCESS":
            stage.finished = entry.timestamp
            self._print_stage(stage)
        elif kind == "STEP_FAILURE":
            stage.finished = entry.timestamp
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and getattr(error, "cause", None) is not None:
                error = error.cause
            stage.failed = (getattr(error, "message", "") or event.message or "failed").strip().splitlines()[-1]
            self._print_stage(stage)

    def _print_stage(self, stage: StageProgress) -> None:
        self.reported += 1
        n = self.reported
        took = f"{stage.finished - stage.started:.1f}s" if stage.started and stage.finished else ""
        what = "FAILED (the error is below)" if stage.failed else describe_stage(stage.name, stage.metadata)
        print(f"  [{n}/{len(STAGES)}] {stage.name:<20} {what}  ({took})", file=self.out, flush=True)


def _days(per_day: dict) -> str:
    return f"{len(per_day)} day{'s' if len(per_day) != 1 else ''}"


def _sum(per_day: dict[str, dict], key: str) -> int:
    return sum(int(v.get(key) or 0) for v in per_day.values())


def _last(per_day: dict[str, dict]) -> dict:
    return per_day[max(per_day)] if per_day else {}


def describe_stage(name: str, metadata: dict[str, dict[str, dict]]) -> str:
    """One line of counts for a finished stage, from its materialization metadata per asset and day."""
    if name.startswith("ingest_"):
        kind = name.removeprefix("ingest_")
        raw = metadata.get(f"raw_{kind}", {})
        return (f"{_days(raw)}: {_sum(raw, 'rows_valid'):,} {kind.rstrip('s')} rows valid, "
                f"{_sum(raw, 'rows_quarantined'):,} quarantined")
    if name == "profiles":
        per_day = metadata.get("profiles", {})
        last = _last(per_day)
        return f"{_days(per_day)}: {int(last.get('identities') or 0):,} identities on {max(per_day, default='-')}"
    if name == "compute_memberships":
        per_day = metadata.get("memberships", {})
        last = _last(per_day)
        segments = sum(int(last.get(k) or 0) for k in ("segments_refreshed", "segments_frozen", "segments_skipped"))
        return (f"{_days(per_day)}: {segments} segments, {int(last.get('total_memberships') or 0):,} "
                f"memberships on {max(per_day, default='-')}")
    if name == "segment_feed_daily":
        per_day = metadata.get("segment_feed_daily", {})
        last = _last(per_day)
        return (f"{_days(per_day)}: {len(per_day)} feed files, {int(last.get('rows') or 0):,} identities "
                f"in the file of {max(per_day, default='-')}")
    return f"{sum(len(v) for v in metadata.values())} materializations"


# -- the summary ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    """The counts the demo ends with (all from the run's metadata, except files: the folders)."""

    days: list[str]
    identities: int
    segments: int
    segments_with_members: int
    memberships: int
    skipped_segments: int
    quarantined_profiles: int
    quarantined_events: int
    warehouse_files: int
    export_files: int | None  # None: exports are not on a local disk (S3)

    @classmethod
    def from_run(cls, stages: dict[str, StageProgress], warehouse: Path, exports: Path | None,
                 since: float) -> Summary:
        meta: dict[str, dict[str, dict]] = {}
        for stage in stages.values():
            meta.update(stage.metadata)
        memberships = meta.get("memberships", {})
        last = max(memberships, default=None)
        segment_counts = {k.removeprefix("members/"): int(v or 0)
                          for k, v in (memberships.get(last) or {}).items() if k.startswith("members/")}
        return cls(
            days=sorted(memberships),
            identities=int(_last(meta.get("profiles", {})).get("identities") or 0),
            segments=len(segment_counts),
            segments_with_members=sum(1 for v in segment_counts.values() if v),
            memberships=int((memberships.get(last) or {}).get("total_memberships") or 0),
            skipped_segments=int((memberships.get(last) or {}).get("segments_skipped") or 0),
            quarantined_profiles=_sum(meta.get("quarantine_profiles", {}), "rows_quarantined"),
            quarantined_events=_sum(meta.get("quarantine_events", {}), "rows_quarantined"),
            warehouse_files=count_files_since(warehouse, since),
            export_files=count_files_since(exports, since) if exports is not None else None,
        )

    def lines(self, warehouse: str, exports: str) -> list[str]:
        span = f"{self.days[0]} .. {self.days[-1]}" if self.days else "-"
        last = self.days[-1] if self.days else "-"
        export_files = f"{self.export_files:,} files" if self.export_files is not None else "files"
        return [
            f"  days           {len(self.days)} ({span})",
            f"  identities     {self.identities:,} on {last}",
            f"  segments       {self.segments} ({self.segments_with_members} with members, "
            f"{self.skipped_segments} skipped), {self.memberships:,} memberships on {last}",
            f"  quarantined    {self.quarantined_profiles + self.quarantined_events:,} rows "
            f"({self.quarantined_profiles:,} profiles, {self.quarantined_events:,} events; reason, file and line "
            "in quarantine_profiles / quarantine_events)",
            f"  files written  {self.warehouse_files:,} Parquet files in {warehouse}",
            f"                 {export_files} of the daily feed in {exports}",
        ]


def count_files_since(root: Path, since: float) -> int:
    """Files under ``root`` modified at or after ``since`` (epoch seconds): what a run wrote there."""
    count = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                if os.stat(os.path.join(folder, name)).st_mtime >= since:
                    count += 1
            except FileNotFoundError:
                continue
    return count


# -- the command ---------------------------------------------------------------------------------------


def _rel(path: Path | str) -> str:
    """A path as the user typed it from the project folder when it is inside, else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def _shell_home(home: Path) -> str:
    """DAGSTER_HOME for a command to copy: Dagster needs an absolute path, so ``$PWD/...`` when the
    folder is under the current one, else the absolute path (shell-quoted)."""
    import shlex

    rel = _rel(home)
    return f"$PWD/{rel}" if not Path(rel).is_absolute() else shlex.quote(str(Path(home).resolve()))


def run_demo(start: str | None, end: str | None, verbose: bool = False, out: TextIO = sys.stdout,
             export_location: Callable[[], str] | None = None, ui_command: str | None = None) -> int:
    """The ``demo`` command. Returns the exit code (0 when the run succeeded).

    ``ui_command``: the command printed to open the UI (default ``DAGSTER_HOME=... dg dev`` in the
    project; an example's is :func:`example_ui_command`).

    Runs with umask 077: everything it writes (warehouse, exports, Dagster's run and event storage
    with the member previews) is owner-only.
    """
    import dagster as dg

    os.umask(0o077)

    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    landing = settings.landing_root()
    days = sample_days(landing)
    if not days and not (start and end):
        print(f"no landing files under {landing}; write some with "
              "`segment-pipeline generate --out <folder>` and point SEGMENT_PIPELINE_LANDING at it", file=out)
        return 2
    start, end = start or days[0], end or days[-1]
    home = Path(os.environ.get("DAGSTER_HOME") or settings.base_dir() / ".dagster_home").expanduser().resolve()
    os.environ["DAGSTER_HOME"] = str(home)  # Dagster needs it absolute

    print(f"segment-pipeline demo: the daily pipeline on {_rel(landing)}, {start} .. {end}", file=out)
    if (note := prepare_instance(home)) is not None:
        print(f"  {note}", file=out)
    try:
        print(f"  {pin_partitions(settings.base_dir() / '.env', end)}", file=out)
    except PartitionsClosed as exc:
        print(f"  {exc}", file=out)
        return 2
    # one run, as: dg launch --job daily_segments --partition-range START...END
    print(f"  running job daily_segments for {start}...{end} as one run "
          f"(same as: dg launch --job daily_segments --partition-range {start}...{end})", file=out, flush=True)

    from segment_pipeline.defs.automation.sensors import PIPELINE_DAILY, PIPELINE_TAG, RANGE_END, RANGE_START

    tag = uuid.uuid4().hex
    tags = {RANGE_START: start, RANGE_END: end, PIPELINE_TAG: PIPELINE_DAILY, DEMO_TAG: tag,
            "segment_pipeline/trigger": "segment-pipeline demo"}
    run_config = None if verbose else {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    started = time.time()
    with dg.DagsterInstance.get() as instance:
        watcher = RunWatcher(instance, tag, out).start()
        try:
            result = dg.execute_job(dg.reconstructable(daily_segments_job), instance=instance,
                                    run_config=run_config, tags=tags)
        finally:
            watcher.stop()
    took = time.time() - started
    run_id = result.run_id
    warehouse, exports = settings.warehouse_root(), export_location() if export_location else ""
    ui = ui_command or f"DAGSTER_HOME={_shell_home(home)} dg dev"
    if not result.success:
        failed = [s for s in watcher.stages.values() if s.failed]
        print(f"\nFailed after {took:.0f}s: run {run_id[:8]} (daily_segments, {start}...{end}).", file=out)
        for stage in failed:
            print(f"  {stage.name}: {stage.failed}", file=out)
        print(f"The run's full log is in the UI: {ui}, then Runs -> {run_id[:8]}.", file=out)
        return 1
    local_exports = None if exports.startswith("s3://") else Path(exports)
    summary = Summary.from_run(watcher.stages, Path(warehouse), local_exports, since=started - 1)
    print(f"\nDone in {took:.0f}s: run {run_id[:8]} (daily_segments, {start}...{end}) succeeded.", file=out)
    for line in summary.lines(_rel(warehouse), _rel(exports)):
        print(line, file=out)
    print(f"\nOpen the UI on this instance:  {ui}   (then http://localhost:3000)", file=out)
    return 0
