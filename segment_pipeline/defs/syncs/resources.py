"""Destination connections for the sync assets: one Dagster resource per registered destination
(:data:`segment_pipeline.core.sync.destinations.DESTINATIONS`), its fields the destination's
:class:`~segment_pipeline.core.sync.engine.Option` list. Secrets come only from the environment,
via ``dg.EnvVar`` (Dagster shows the variable's name, never its value).

Environment (read when the code location loads; a missing secret means a dry run), per destination
as its module declares (docs/syncs.md lists them):

* Klaviyo: ``KLAVIYO_API_KEY`` (private API key, scopes ``lists:read/write``, ``profiles:read/write``),
  ``KLAVIYO_BASE_URL`` (default ``https://a.klaviyo.com``), ``KLAVIYO_REVISION`` (default the specs'
  revision), ``SEGMENT_PIPELINE_KLAVIYO_LIST`` (default ``Nosto Customers``),
  ``SEGMENT_PIPELINE_KLAVIYO_PROPERTY`` (default ``nosto_segment``), ``SEGMENT_PIPELINE_KLAVIYO_IN_FLIGHT``.
* dotdigital: ``DOTDIGITAL_API_USER`` / ``DOTDIGITAL_API_PASSWORD`` (API user, HTTP Basic),
  ``DOTDIGITAL_BASE_URL`` (the account's region endpoint, default ``https://r1-api.dotdigital.com``),
  ``SEGMENT_PIPELINE_DOTDIGITAL_FIELD`` (default ``NOSTOSEGMENT``),
  ``SEGMENT_PIPELINE_DOTDIGITAL_ADDRESS_BOOK`` (default ``Nosto Customers``),
  ``SEGMENT_PIPELINE_DOTDIGITAL_CONCURRENT_IMPORTS`` (default 3).
* Braze: ``BRAZE_API_KEY`` (REST API key, permission ``users.track``), ``BRAZE_REST_ENDPOINT`` (the
  workspace's REST endpoint, required with a key), ``SEGMENT_PIPELINE_BRAZE_ATTRIBUTE`` (default
  ``nosto_segment``), ``SEGMENT_PIPELINE_BRAZE_MAX_ARRAY_LENGTH`` (25),
  ``SEGMENT_PIPELINE_BRAZE_OBJECTS_PER_REQUEST`` (75), ``SEGMENT_PIPELINE_BRAZE_RATE_LIMIT`` (3000 per
  3 s), ``SEGMENT_PIPELINE_BRAZE_IN_FLIGHT`` (32).
* Meta: ``META_ACCESS_TOKEN`` (system-user token, ``ads_management``), ``META_AD_ACCOUNT_ID``,
  ``META_BASE_URL`` (default ``https://graph.facebook.com``), ``META_API_VERSION`` (default ``v25.0``),
  ``SEGMENT_PIPELINE_META_AUDIENCE_PREFIX``, ``SEGMENT_PIPELINE_META_CALLS_PER_HOUR`` (default 5,000).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from segment_pipeline.core.esp.http import EspClient
from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.sync.engine import Destination


class SyncResource(dg.ConfigurableResource):
    """Base of the per-destination resources: ``client()`` (None without credentials: dry run) and
    ``settings()``, both built by the destination class from the resource's field values."""

    def _destination(self) -> type[Destination]:
        return type(self).destination_cls  # type: ignore[attr-defined]

    def _values(self) -> dict[str, Any]:
        d = self._destination()
        return d.option_values({o.name: getattr(self, o.name) for o in d.options})

    def client(self) -> EspClient | None:
        return self._destination().client_from(self._values())

    def settings(self) -> Any:
        return self._destination().settings_from(self._values())


def resource_class(d: type[Destination]) -> type[SyncResource]:
    """The ``ConfigurableResource`` subclass for destination ``d`` (one field per option)."""
    ns: dict[str, Any] = {
        "__annotations__": {o.name: type(o.default) for o in d.options},
        "__doc__": f"{d.title} account + sync settings. No credentials -> dry run.",
        "__module__": __name__,
        **{o.name: o.default for o in d.options},
    }
    cls = type(f"{d.title[:1].upper()}{d.title[1:]}Resource", (SyncResource,), ns)
    cls.destination_cls = d  # type: ignore[attr-defined]
    return cls


RESOURCES: dict[str, type[SyncResource]] = {name: resource_class(d) for name, d in DESTINATIONS.items()}
KlaviyoResource = RESOURCES["klaviyo"]
DotdigitalResource = RESOURCES["dotdigital"]


def resource_from_env(name: str) -> SyncResource:
    """The destination's resource with every option whose environment variable is set bound to it."""
    d = DESTINATIONS[name]
    return RESOURCES[name](**{o.name: dg.EnvVar(o.env) if isinstance(o.default, str) else dg.EnvVar.int(o.env)
                              for o in d.options if os.environ.get(o.env)})


def klaviyo_resource_from_env() -> SyncResource:
    return resource_from_env("klaviyo")


def dotdigital_resource_from_env() -> SyncResource:
    return resource_from_env("dotdigital")


@dg.definitions
def sync_resources() -> dg.Definitions:
    return dg.Definitions(resources={name: resource_from_env(name) for name in DESTINATIONS})
