"""The ``segment-pipeline`` command line: the demo, sample data, profile rebuilds, the segment API and its
credentials, the sync plan preview, deletion requests (``forget``) and their propagation (``erasure``)."""

from __future__ import annotations

import argparse
import sys


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none (required, flags, unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, "", argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: help with defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if "help" not in kwargs and kwargs.get("default") not in (None, False, "") and not kwargs.get("required"):
            kwargs["help"] = "(default: %(default)s)"  # an option without help text still shows its default
        return super().add_argument(*args, **kwargs)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="write deterministic sample landing files",
        description=(
            "Writes <out>/profiles/date=YYYY-MM-DD/ and <out>/events/date=YYYY-MM-DD/ files for --days days "
            "from --start. Same arguments, same bytes. Refuses to replace existing landing files of those "
            "days unless --overwrite is given (the shipped sample in data/landing is one such folder)."
        ),
    )
    p.add_argument("--out", required=True, help="landing folder to write into (required; e.g. my_landing)")
    p.add_argument("--profiles", type=int, default=3000, help="number of distinct customers")
    p.add_argument("--days", type=int, default=14, help="number of daily files per kind")
    p.add_argument("--events-per-profile", type=float, default=3.0, help="average events per profile")
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed and arguments, same bytes)")
    p.add_argument("--start", default="2026-11-01", help="first day (YYYY-MM-DD)")
    p.add_argument("--format", choices=["ndjson", "csv", "parquet"], default="ndjson",
                   help="file format (apparel schema; the beauty_shop schema writes CSV + NDJSON)")
    p.add_argument("--example", choices=["apparel", "beauty_shop"], default="apparel",
                   help="which example's schema: apparel (data/, folders profiles + events) or beauty_shop "
                        "(examples/beauty_shop: a Shopify customer CSV export in shopify_customers/ and a "
                        "Segment-spec NDJSON stream in segment_stream/) (default: %(default)s)")
    p.add_argument("--malformed-rate", type=float, default=0.002, help="share of rows broken on purpose")
    p.add_argument("--overwrite", action="store_true",
                   help="replace landing files already present for the generated days")

    def run(args: argparse.Namespace) -> int:
        import datetime as dt
        from pathlib import Path

        from segment_pipeline.core.generate import generate_from_args

        try:
            first = dt.date.fromisoformat(args.start)
        except ValueError:
            print(f"--start {args.start!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
            return 2
        if args.example == "beauty_shop" and args.format != "ndjson":
            print("--format applies to the apparel schema; --example beauty_shop writes its own formats "
                  "(a Shopify CSV export and a Segment NDJSON stream)", file=sys.stderr)
            return 2
        days = [(first + dt.timedelta(days=i)).isoformat() for i in range(max(args.days, 0))]
        out = Path(args.out)
        kinds = ("shopify_customers", "segment_stream") if args.example == "beauty_shop" else ("profiles", "events")
        taken = sorted({d for d in days for kind in kinds
                        if any((out / kind / f"date={d}").glob("*"))})
        if taken and not args.overwrite:
            span = taken[0] if len(taken) == 1 else f"{taken[0]}..{taken[-1]}"
            print(f"{out} already holds landing files for {len(taken)} of these days ({span}): "
                  "choose an empty --out, or pass --overwrite to replace them", file=sys.stderr)
            return 2
        return generate_from_args(args)

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main pipeline on the shipped sample data (a range backfill in one Dagster run)",
        description=(
            "Runs the daily_segments job for the sample's days as one Dagster run in DAGSTER_HOME "
            "(default: .dagster_home in the project, set up from deploy/dagster.yaml), closes the daily "
            "partitions at the sample's last day (SEGMENT_PIPELINE_END_DATE in the project's .env), prints "
            "one line per stage and a summary with counts, and the command that opens the UI on the run."
        ),
    )
    p.add_argument("--start", default=None, help="first day (default: the sample's first day)")
    p.add_argument("--end", default=None, help="last day (default: the sample's last day)")
    p.add_argument("--verbose", action="store_true", help="also print Dagster's own run log (every event)")
    p.add_argument("--example", choices=["apparel", "beauty_shop"], default="apparel",
                   help="apparel: the default demo in data/; beauty_shop: examples/beauty_shop (its own model, "
                        "sources, segments, landing files; warehouse and exports inside that folder) "
                        "(default: %(default)s)")

    def run(args: argparse.Namespace) -> int:
        from segment_pipeline.demo import example_ui_command, run_demo, use_example

        ui_command = None
        if args.example != "apparel":
            print(f"example {args.example}: " + " ".join(use_example(args.example)))
            ui_command = example_ui_command(args.example)
        return run_demo(args.start, args.end, verbose=args.verbose, export_location=_export_location,
                        ui_command=ui_command)

    p.set_defaults(func=run)


def _add_rebuild(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rebuild",
        help="rebuild profiles and computed traits from a day on (after a data model change)",
        description=(
            "Builds the profile and trait state of --from from every raw partition up to it (a full build), "
            "then each later day incrementally from the day before, through --to, writing each day's profiles "
            "(docs/incremental.md). Needed after changing the data model's traits or attributes; a day whose "
            "previous state was built from another model is rebuilt in full anyway. Segment memberships are "
            "not touched: re-run them for the same days afterwards."
        ),
    )
    p.add_argument("--from", dest="first", required=True, help="first day to rebuild (YYYY-MM-DD; required)")
    p.add_argument("--to", dest="last", default=None,
                   help="last day (YYYY-MM-DD; default: the latest day with raw or profiles data)")

    def run(args: argparse.Namespace) -> int:
        import datetime as dt

        from segment_pipeline import settings
        from segment_pipeline.core.incremental import rebuild
        from segment_pipeline.core.warehouse import Warehouse, connect

        try:
            first = dt.date.fromisoformat(args.first)
            last = dt.date.fromisoformat(args.last) if args.last else None
        except ValueError:
            print(f"--from/--to must be dates (YYYY-MM-DD), got {args.first!r} / {args.last!r}", file=sys.stderr)
            return 2
        warehouse = Warehouse(settings.warehouse_root())
        try:
            done = rebuild(connect(), warehouse, first, last,
                           progress=lambda day, n, mode: print(f"{day}  {mode:<11}  {n:>10,} identities"))
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"rebuilt profiles of {len(done)} day(s), {done[0][0]}..{done[-1][0]}; re-run memberships for them: "
              f"dg launch --job daily_segments --partition-range {done[0][0]}...{done[-1][0]}")
        return 0

    p.set_defaults(func=run)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the segment API (daily feed pull, identity lookup, segment exports); see docs/api.md",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="lowest level logged (request lines are info)")

    def run(args: argparse.Namespace) -> int:
        import logging

        import uvicorn

        from segment_pipeline.api import logs
        from segment_pipeline.api.app import create_app

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logs.install(logging.getLogger().handlers)  # control characters from requests are escaped in every line
        # our own access log masks emails and drops query strings (signatures): uvicorn's is off
        uvicorn.run(create_app(), host=args.host, port=args.port, access_log=False, log_level=args.log_level,
                    server_header=False)
        return 0

    p.set_defaults(func=run)


def _add_credentials(sub: argparse._SubParsersAction, command: str, kind: str) -> None:
    what = "feed token" if kind == "feed" else "API key"
    p = sub.add_parser(
        command,
        help=f"create, list or revoke {what}s of the segment API (stored hashed under SEGMENT_PIPELINE_API_STATE)",
    )
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help=f"create {'an' if what[0] in 'aeiou' else 'a'} {what}; it is printed once and never stored")
    if kind == "feed":
        create.add_argument("--identifier", default="nosto", help="the Basic auth user name (default: nosto)")
    else:
        create.add_argument("--name", default="default", help="a label for the key (who uses it)")
    create.add_argument("--note", default="", help="free text stored with it (e.g. a ticket or partner name)")
    listing = actions.add_parser("list", help=f"list {what}s (ids and labels only)")
    listing.add_argument("--all", action="store_true", help="include revoked ones")
    revoke = actions.add_parser("revoke", help=f"revoke a {what} by id")
    revoke.add_argument("id")

    def run(args: argparse.Namespace) -> int:
        from segment_pipeline.core.feed_auth import CredentialStore

        store = CredentialStore()
        if args.action == "create":
            label = args.identifier if kind == "feed" else args.name
            cred, token = store.create(kind, label, args.note)
            print(f"created {what} {cred.id} for {label!r} (store: {store.path})", file=sys.stderr)
            if kind == "feed":
                print(f"use HTTP Basic auth {label}:<token>; the token is shown only now:", file=sys.stderr)
            else:
                print("use 'Authorization: Bearer <key>'; the key is shown only now:", file=sys.stderr)
            print(token)
            return 0
        if args.action == "list":
            for cred in store.list(kind, include_revoked=args.all):
                state = f"revoked {cred.revoked_at}" if cred.revoked_at else "active"
                print(f"{cred.id}\t{cred.identifier}\t{cred.created_at}\t{state}\t{cred.note}")
            return 0
        revoked = store.revoke(args.id, kind)
        if revoked is None:
            print(f"no {what} with id {args.id!r}", file=sys.stderr)
            return 1
        print(f"revoked {what} {revoked.id} ({revoked.identifier})")
        return 0

    p.set_defaults(func=run)


def _add_tokens(sub: argparse._SubParsersAction) -> None:
    _add_credentials(sub, "tokens", "feed")


def _add_api_keys(sub: argparse._SubParsersAction) -> None:
    _add_credentials(sub, "api-keys", "api_key")


def _add_sync(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        help="preview what the next sync run of a destination would change, or run it (see docs/syncs.md)",
    )
    actions = p.add_subparsers(dest="action", required=True)
    plan = actions.add_parser(
        "plan",
        help="print what the next run would add, update, clear and remove, per mapped field, with a sample",
        description=(
            "Plans the next run of the destination's sync asset from the same warehouse, mirror, segments, "
            "field mappings and settings (environment) as the asset, against the list/field the last real run "
            "used, and prints counts and a small sample (emails masked). Nothing is sent; no network call. "
            "Exit status 3 when the removal guard (SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE) would stop the run."
        ),
    )
    plan.add_argument("destination", help="klaviyo, dotdigital, braze or meta")
    plan.add_argument("--day", default="", help="memberships day (YYYY-MM-DD); default: the latest complete one")
    plan.add_argument("--sample", type=int, default=3, help="contacts shown per change")
    plan.add_argument("--allow-large-removal", action="store_true",
                      help="report the guard as confirmed (exit 0)")
    apply = actions.add_parser(
        "run",
        help="run the sync now, as the <destination>_sync asset does (outside Dagster: no materialization)",
        description=(
            "One sync run of the destination with the asset's warehouse, mirror, segments, mappings and "
            "environment (credentials from the environment; without them a dry run). Prints the run's counts "
            "as JSON. Exit status 3 when the removal guard stopped it (nothing was sent)."
        ),
    )
    apply.add_argument("destination", help="klaviyo, dotdigital, braze or meta")
    apply.add_argument("--day", default="", help="memberships day (YYYY-MM-DD); default: the latest complete one")
    apply.add_argument("--allow-large-removal", action="store_true",
                       help="confirm a run that clears or removes more than SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE "
                            "of the destination's contacts")

    def run(args: argparse.Namespace) -> int:
        import datetime as dt
        import os
        from pathlib import Path

        from segment_pipeline import settings
        from segment_pipeline.core.privacy.suppression import refresh_suppression
        from segment_pipeline.core.segments import load_catalog
        from segment_pipeline.core.sync.destinations import destination
        from segment_pipeline.core.sync.plan import preview
        from segment_pipeline.core.sync.runner import destination_mappings
        from segment_pipeline.core.warehouse import Warehouse

        try:
            cls = destination(args.destination)
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
        wh = Warehouse(settings.warehouse_root())
        if args.day:
            day = dt.date.fromisoformat(args.day)
            if not wh.has_partition("memberships", day):
                print(f"no complete memberships partition for {day}", file=sys.stderr)
                return 2
        else:
            days = wh.partition_dates("memberships")
            if not days:
                print("no complete memberships partition yet: materialize memberships first", file=sys.stderr)
                return 2
            day = days[-1]
        catalog = load_catalog(settings.segments_file(), wh.model)
        synced = {s.id: s.name for s in catalog.segments if s.sync.get(cls.name)}
        # the lists in force, as the asset does (fail closed: declared lists that cannot be loaded stop here)
        refresh_suppression(wh)
        values = cls.option_values({o.name: os.environ.get(o.env) for o in cls.options})
        guard = settings.sync_max_removal_share()
        state_dir = Path(wh.root) / "sync_state" / cls.name
        if args.action == "run":
            import json

            from segment_pipeline.core.privacy.filters import privacy_counts
            from segment_pipeline.core.sync.engine import run_sync
            from segment_pipeline.core.sync.plan import RemovalGuardError
            from segment_pipeline.core.warehouse import connect

            con = connect(memory_limit="1GB")
            try:
                held = privacy_counts(con, wh, days=[day], segment_ids=list(synced), destination=cls.name)
            finally:
                con.close()
            privacy: dict[str, object] = {}
            if "suppressed" in held:
                per_list = dict(held["suppressed"])  # type: ignore[call-overload]
                privacy.update(suppressed=per_list, suppressed_total=sum(per_list.values()))
            if "consent_withheld" in held:
                privacy["consent_withheld"] = held["consent_withheld"]
            client = cls.client_from(values)
            d = cls(client, cls.settings_from(values))
            d.mappings = destination_mappings(d, wh.model)
            try:
                report = run_sync(d, wh, day, synced, state_dir=state_dir, dry_run_root=Path(wh.root) / "sync_dry_run",
                                  log=lambda m: print(m, file=sys.stderr), max_removal_share=guard,
                                  allow_large_removal=args.allow_large_removal)
            except RemovalGuardError as exc:
                print(str(exc), file=sys.stderr)
                return 3
            finally:
                if client is not None:
                    client.close()
            out = {**report.counts(), **privacy, "status": report.status, "dry_run": report.dry_run,
                   "day": report.day, "notes": report.notes, "plan": report.plan}
            if report.payload_dir:
                out["payload_dir"] = report.payload_dir  # dry run: the requests that would have been sent
            print(json.dumps(out, indent=1))
            return 0
        d = cls(None, cls.settings_from(values))  # no client: planning never calls the destination
        d.mappings = destination_mappings(d, wh.model)
        result = preview(d, wh, day, synced, state_dir=state_dir, max_removal_share=guard, sample=args.sample)
        print(result.render())
        if result.guard_stops and not args.allow_large_removal:
            print(f"the next {cls.name} run stops at the removal guard unless confirmed (asset run config "
                  f"allow_large_removal: true, or segment-pipeline sync run {cls.name} --allow-large-removal)",
                  file=sys.stderr)
            return 3
        return 0

    plan.set_defaults(func=run)
    apply.set_defaults(func=run)
def _add_erasure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "erasure",
        help="deletion requests at the destinations: the ledger per request and destination, or one pass now",
        description=(
            "status: prints the deletion ledger per request and destination (hashes only, never an address): "
            "when each destination was asked, when it accepted (done) and confirmed the deletion, attempts and "
            "the last error. run: one propagation pass now (what the daily privacy_erasure asset does) to every "
            "destination whose credentials are set in the environment (docs/syncs.md, \"Deletion requests\")."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="the ledger per request and destination (hashes only)")
    status.add_argument("--request", default=None, help="only this request id")
    status.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    actions.add_parser("run", help="propagate the open deletion requests to every configured destination now")

    def run(args: argparse.Namespace) -> int:
        import json

        from segment_pipeline import settings
        from segment_pipeline.core.privacy import erasure

        root = settings.warehouse_root()
        if args.action == "status":
            rows = erasure.status_rows(root, args.request)
            if args.json:
                for row in rows:
                    print(json.dumps(row, default=str))
            else:
                print(erasure.format_status(rows) if rows else "no deletion requests")
            return 0
        destinations = erasure.destinations_from_env()
        if not destinations:
            print("no destination has credentials set: nothing to propagate to", file=sys.stderr)
        try:
            report = erasure.propagate(root, destinations, log=print)
        finally:
            for d in destinations.values():
                if d.client is not None:
                    d.client.close()
        for key, value in report.metadata().items():
            print(f"{key}: {value}")
        return 0 if report.ok else 1

    p.set_defaults(func=run)


def _add_forget(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forget",
        help="forget people (GDPR Art. 17 / CCPA): record deletion requests and remove them from every "
             "warehouse and export file; --lift lets a forgotten address back in",
        description="Record a deletion request (the ledger keeps a SHA-256 hash and a tombstone) for each address, "
                    "then remove every open request's identity from every file under the warehouse and export roots "
                    "and from the identity index. Idempotent: run it again (even with no address) to finish an "
                    "interrupted run. Destinations are asked by the erasure step of the sync.",
    )
    p.add_argument("addresses", nargs="*", metavar="ADDRESS", help="email addresses to forget")
    p.add_argument("--file", action="append", default=[], metavar="F",
                   help="a file of addresses: CSV with an 'email' column, NDJSON with an 'email' key, or one per line")
    p.add_argument("--lift", action="store_true",
                   help="lift the tombstones of the given addresses (or SHA-256 hex) instead: later landing "
                        "files may bring them back")

    def run(args: argparse.Namespace) -> int:
        import os

        from segment_pipeline import settings
        from segment_pipeline.core.privacy.forget import (
            InvalidAddressError,
            RequestFileError,
            export_storage_from_env,
            forget,
            read_request_file,
        )
        from segment_pipeline.core.privacy.ledger import Ledger
        from segment_pipeline.core.privacy.scrub import ScrubError

        root = settings.warehouse_root()
        if args.lift:
            if args.file or not args.addresses:
                print("forget --lift: give the addresses (or SHA-256 hex) on the command line", file=sys.stderr)
                return 2
            ledger = Ledger(root)
            for n, value in enumerate(args.addresses, 1):
                lifted = ledger.lift(value)
                print(f"entry {n}: tombstone {'lifted' if lifted else 'not found (nothing to lift)'}")
            return 0
        try:
            emails = list(args.addresses)
            for f in args.file:
                if not os.path.isfile(f):
                    print(f"forget: --file {f}: {'is a folder' if os.path.isdir(f) else 'no such file'}",
                          file=sys.stderr)
                    return 2
                emails.extend(read_request_file(f))
            result = forget(root, export_storage_from_env(), emails, "cli", log=print)
        except (InvalidAddressError, RequestFileError, ScrubError) as exc:
            print(f"forget: {exc}", file=sys.stderr)
            return 1
        for req in result.requested:
            print(f"request {req.request_id} sha256={req.email_sha256}")
        return 0

    p.set_defaults(func=run)


def _export_location() -> str:
    import os
    from pathlib import Path

    from segment_pipeline import settings

    if os.environ.get("SEGMENT_PIPELINE_EXPORT_BUCKET"):
        prefix = os.environ.get("SEGMENT_PIPELINE_EXPORT_PREFIX", "exports")
        return f"s3://{os.environ['SEGMENT_PIPELINE_EXPORT_BUCKET']}/{prefix}"
    return os.environ.get("SEGMENT_PIPELINE_EXPORT_DIR") or str(Path(settings.warehouse_root()).parent / "exports")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="segment-pipeline", description=__doc__.replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_demo(sub)
    _add_rebuild(sub)
    _add_serve(sub)
    _add_tokens(sub)
    _add_api_keys(sub)
    _add_sync(sub)
    _add_erasure(sub)
    _add_forget(sub)
    return parser


def _usage_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user wrote (a settings variable, a YAML file: data model, sources,
    segments, privacy, destination mappings; a request file): their message already names the
    variable or the file and the entry, so the CLI prints it as one line and exits 2, no traceback."""
    from segment_pipeline.core.model import ModelFileError
    from segment_pipeline.core.privacy.config import PrivacyFileError
    from segment_pipeline.core.privacy.forget import RequestFileError
    from segment_pipeline.core.safe_yaml import YamlFileError
    from segment_pipeline.core.segments import SegmentDefinitionError
    from segment_pipeline.core.sources import SourcesFileError
    from segment_pipeline.core.sync.mappings import MappingFileError
    from segment_pipeline.settings import SettingsError

    return (SettingsError, YamlFileError, ModelFileError, SourcesFileError, SegmentDefinitionError,
            PrivacyFileError, MappingFileError, RequestFileError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _usage_errors() as exc:
        print(f"segment-pipeline {args.command}: " + " ".join(str(exc).split("\n")), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
