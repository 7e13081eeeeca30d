"""Dry run: write exactly the request payloads a run would send, plus a counts summary, no network."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from segment_pipeline.core.atomic import atomic_write_bytes, atomic_write_text, private_mkdir


class DryRunWriter:
    def __init__(self, root: str | Path, integration: str, now: dt.datetime | None = None):
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
        self.dir = Path(root) / integration / stamp
        private_mkdir(self.dir)  # payloads hold emails: 0700 folders, 0600 files (atomic_write_*)
        self.files = 0
        self.requests = 0

    def write(self, name: str, payload: bytes) -> Path:
        self.files += 1
        self.requests += 1
        # a fresh folder of this run: no leftovers to sweep (and many files: sweeping each time is quadratic)
        return atomic_write_bytes(self.dir / name, payload, sweep=False)

    def summary(self, counts: dict[str, object]) -> Path:
        return atomic_write_text(self.dir / "summary.json", json.dumps(counts, indent=2, sort_keys=True) + "\n")
