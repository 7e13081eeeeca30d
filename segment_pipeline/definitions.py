"""The ``segment_pipeline`` code location: everything under ``defs/`` is loaded automatically.

Global settings: runs execute in one process (every step is DuckDB work that already uses all
cores, so a process per step would only add start-up time).
"""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(executor=dg.in_process_executor),
    )
