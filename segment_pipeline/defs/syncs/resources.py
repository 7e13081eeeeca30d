"""ESP connections for the sync assets. Secrets come only from the environment, via ``dg.EnvVar``.

Environment (read when the code location loads; a missing credential means a dry run):

* ``KLAVIYO_API_KEY``: Klaviyo private API key (scopes ``lists:read/write``, ``profiles:read/write``).
* ``KLAVIYO_BASE_URL`` (default ``https://a.klaviyo.com``), ``KLAVIYO_REVISION`` (default the specs' revision).
* ``SEGMENT_PIPELINE_KLAVIYO_LIST`` (default ``Nosto Customers``),
  ``SEGMENT_PIPELINE_KLAVIYO_PROPERTY`` (default ``nosto_segment``).
* ``DOTDIGITAL_API_USER`` / ``DOTDIGITAL_API_PASSWORD``: dotdigital API user (HTTP Basic).
* ``DOTDIGITAL_BASE_URL``: the account's region endpoint (default ``https://r1-api.dotdigital.com``).
* ``SEGMENT_PIPELINE_DOTDIGITAL_FIELD`` (default ``NOSTOSEGMENT``),
  ``SEGMENT_PIPELINE_DOTDIGITAL_ADDRESS_BOOK`` (default ``Nosto Customers``).
"""

from __future__ import annotations

import os

import dagster as dg

from segment_pipeline.core.esp import dotdigital as dd
from segment_pipeline.core.esp import klaviyo as kl
from segment_pipeline.core.sync.runner import DotdigitalSettings, KlaviyoSettings


class KlaviyoResource(dg.ConfigurableResource):
    """Klaviyo account + sync settings. No API key -> dry run."""

    api_key: str = ""
    base_url: str = kl.DEFAULT_BASE_URL
    revision: str = kl.DEFAULT_REVISION
    list_name: str = "Nosto Customers"
    property_name: str = "nosto_segment"
    max_in_flight: int = 32

    def client(self) -> kl.KlaviyoClient | None:
        if not self.api_key:
            return None
        return kl.KlaviyoClient(self.api_key, base_url=self.base_url, revision=self.revision,
                                pool_size=self.max_in_flight + 4)

    def settings(self) -> KlaviyoSettings:
        return KlaviyoSettings(list_name=self.list_name, property_name=self.property_name,
                               max_in_flight=self.max_in_flight)


class DotdigitalResource(dg.ConfigurableResource):
    """dotdigital account + sync settings. No API user/password -> dry run."""

    api_user: str = ""
    api_password: str = ""
    base_url: str = dd.DEFAULT_BASE_URL
    data_field: str = "NOSTOSEGMENT"
    address_book: str = "Nosto Customers"
    max_concurrent_imports: int = 3

    def client(self) -> dd.DotdigitalClient | None:
        if not (self.api_user and self.api_password):
            return None
        return dd.DotdigitalClient(self.api_user, self.api_password, base_url=self.base_url)

    def settings(self) -> DotdigitalSettings:
        return DotdigitalSettings(data_field=self.data_field, address_book=self.address_book,
                                  max_active_imports=self.max_concurrent_imports)


def _env(name: str) -> dict[str, dg.EnvVar]:
    return {name: dg.EnvVar(name)} if os.environ.get(name) else {}


def _opt(field: str, var: str) -> dict[str, dg.EnvVar]:
    return {field: dg.EnvVar(var)} if os.environ.get(var) else {}


def klaviyo_resource_from_env() -> KlaviyoResource:
    return KlaviyoResource(**_opt("api_key", "KLAVIYO_API_KEY"), **_opt("base_url", "KLAVIYO_BASE_URL"),
                           **_opt("revision", "KLAVIYO_REVISION"),
                           **_opt("list_name", "SEGMENT_PIPELINE_KLAVIYO_LIST"),
                           **_opt("property_name", "SEGMENT_PIPELINE_KLAVIYO_PROPERTY"))


def dotdigital_resource_from_env() -> DotdigitalResource:
    return DotdigitalResource(**_opt("api_user", "DOTDIGITAL_API_USER"),
                              **_opt("api_password", "DOTDIGITAL_API_PASSWORD"),
                              **_opt("base_url", "DOTDIGITAL_BASE_URL"),
                              **_opt("data_field", "SEGMENT_PIPELINE_DOTDIGITAL_FIELD"),
                              **_opt("address_book", "SEGMENT_PIPELINE_DOTDIGITAL_ADDRESS_BOOK"))


@dg.definitions
def sync_resources() -> dg.Definitions:
    return dg.Definitions(resources={"klaviyo": klaviyo_resource_from_env(),
                                     "dotdigital": dotdigital_resource_from_env()})
