"""The registry of sync destinations: every integration, its Dagster resource, sync asset and
schedule, and the segments' ``sync: {<name>: true}`` toggles come from :data:`DESTINATIONS`.

Adding a destination = one module here (a :class:`~segment_pipeline.core.sync.engine.Destination`
subclass), one line below, one fake under ``segment_pipeline_tests/fakes`` and one section in
docs/syncs.md.
"""

from __future__ import annotations

from segment_pipeline.core.sync.destinations.braze import BrazeDestination
from segment_pipeline.core.sync.destinations.dotdigital import DotdigitalDestination
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoDestination
from segment_pipeline.core.sync.destinations.meta import MetaDestination
from segment_pipeline.core.sync.engine import Destination

DESTINATIONS: dict[str, type[Destination]] = {d.name: d for d in (KlaviyoDestination, DotdigitalDestination, BrazeDestination, MetaDestination)}


def destination(name: str) -> type[Destination]:
    """The destination class registered as ``name``; ``KeyError`` names the known ones."""
    try:
        return DESTINATIONS[name]
    except KeyError:
        raise KeyError(f"unknown sync destination {name!r}; known: {', '.join(sorted(DESTINATIONS))}") from None
