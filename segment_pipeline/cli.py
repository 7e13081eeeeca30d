"""The ``segment-pipeline`` command line: generate sample data, run benchmarks, serve."""

from __future__ import annotations

import argparse
import sys


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write deterministic sample landing files")
    p.add_argument("--profiles", type=int, default=3000, help="number of distinct customers")
    p.add_argument("--days", type=int, default=14, help="number of daily files per kind")
    p.add_argument("--events-per-profile", type=float, default=3.0, help="average events per profile")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", default="2026-11-01", help="first day (YYYY-MM-DD)")
    p.add_argument("--out", default="data/landing", help="landing folder to write into")
    p.add_argument("--format", choices=["ndjson", "csv", "parquet"], default="ndjson")
    p.add_argument("--malformed-rate", type=float, default=0.002, help="share of rows broken on purpose")

    def run(args: argparse.Namespace) -> int:
        from segment_pipeline.core.generate import generate_from_args

        return generate_from_args(args)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segment-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
