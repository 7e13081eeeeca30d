"""Klaviyo: list membership plus a profile property holding the segment names.

Requests: profile bulk import jobs (``POST /api/profile-bulk-import-jobs``) carrying
``properties: {<property>: [names]}``; an upsert job also adds its profiles to the list, a clear
job sets the property to ``[]`` and leaves list membership alone (the bulk import API does not
clear with null). Leavers are removed from the list (profile lookup by email, then
``DELETE /api/lists/{id}/relationships/profiles``). Per-row result: the job's import errors,
each naming the original payload's email.

Limits, from Klaviyo's API reference (https://developers.klaviyo.com/en/reference/bulk_import_profiles,
also the shipped OpenAPI specs): "Accepts up to 10,000 profiles per request. The maximum allowed
payload size is 5MB"; rate limits burst 10/s, steady 150/m per endpoint family (the ``x-klaviyo-ratelimit``
entries of the specs, see :data:`segment_pipeline.core.esp.klaviyo.DEFAULT_LIMITS`); list
membership calls take 1,000 profiles. Klaviyo documents no length limit for a list-valued custom
property (searched the reference and help centre), so values are not fitted; every record is
still checked against the 5 MB request limit.

Mapped fields (:mod:`segment_pipeline.core.sync.mappings`): a standard attribute (``first_name``,
``phone_number``, ...) is set in ``attributes`` and ``location.*`` in ``attributes.location``; a clear
sends ``null`` ("setting a field to null will clear out the field, whereas not including a field in
your request will leave it unchanged": the profile endpoints of the shipped spec, ``update_profile.json``).
A custom property is set in ``properties``; a clear is ``meta.patch_properties.unset`` ("Remove a key
or keys (and their values) completely from properties", ``ProfileMetaPatchProperties`` of
``bulk_import_profiles.json``). A record carries only the fields that changed (and the segment
property only when it changed), so everything else on the profile is left as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segment_pipeline.core.esp import klaviyo as kl
from segment_pipeline.core.esp.http import EspAuthError, EspError
from segment_pipeline.core.sync.diff import UPSERT
from segment_pipeline.core.sync.engine import Capabilities, Destination, Erasure, Limits, Option, Outcome
from segment_pipeline.core.sync.fields import cleared_names_sql, members_sql
from segment_pipeline.core.sync.state import Target
from segment_pipeline.core.warehouse import sql_string


@dataclass(frozen=True)
class KlaviyoSettings:
    list_name: str = "Nosto Customers"
    property_name: str = "nosto_segment"
    max_profiles_per_job: int = kl.MAX_IMPORT_PROFILES
    max_bytes_per_job: int = kl.MAX_IMPORT_BYTES
    #: Import jobs submitted and not yet confirmed (about 10/s go out, each takes the server a while).
    max_in_flight: int = 32
    removal_batch: int = kl.MAX_LIST_MEMBERS_PER_CALL


class KlaviyoDestination(Destination):
    name = "klaviyo"
    title = "Klaviyo"
    description = "Klaviyo list membership and the nosto_segment profile property, for the synced segments."
    capabilities = Capabilities(property_upsert=True, list_add=True, list_remove=True)
    options = (
        Option("api_key", "KLAVIYO_API_KEY", secret=True,
               help="private API key (scopes lists:read/write, profiles:read/write; data-privacy:write to erase)"),
        Option("base_url", "KLAVIYO_BASE_URL", kl.DEFAULT_BASE_URL),
        Option("revision", "KLAVIYO_REVISION", kl.DEFAULT_REVISION, help="API revision header"),
        Option("list_name", "SEGMENT_PIPELINE_KLAVIYO_LIST", "Nosto Customers"),
        Option("property_name", "SEGMENT_PIPELINE_KLAVIYO_PROPERTY", "nosto_segment"),
        Option("max_in_flight", "SEGMENT_PIPELINE_KLAVIYO_IN_FLIGHT", 32, help="import jobs not yet confirmed"),
    )
    cron_env, cron = "SEGMENT_PIPELINE_KLAVIYO_SYNC_CRON", "0 */12 * * *"
    freshness_hours = 14

    client: kl.KlaviyoClient | None
    settings: KlaviyoSettings

    @classmethod
    def client_from(cls, options: Mapping[str, Any]) -> kl.KlaviyoClient | None:
        if not options["api_key"]:
            return None
        return kl.KlaviyoClient(options["api_key"], base_url=options["base_url"], revision=options["revision"],
                                pool_size=int(options["max_in_flight"]) + 4)

    @classmethod
    def settings_from(cls, options: Mapping[str, Any]) -> KlaviyoSettings:
        return KlaviyoSettings(list_name=options["list_name"], property_name=options["property_name"],
                               max_in_flight=int(options["max_in_flight"]))

    def limits(self) -> Limits:
        s = self.settings
        return Limits(records_per_request=s.max_profiles_per_job, bytes_per_request=s.max_bytes_per_job,
                      request_overhead=kl.IMPORT_OVERHEAD_BYTES, value=None, rate_limits=kl.DEFAULT_LIMITS,
                      concurrent_jobs=None, in_flight=s.max_in_flight, removals_per_request=s.removal_batch)

    def connect(self) -> Target:
        assert self.client is not None
        self.container_ref = self.client.ensure_list(self.settings.list_name)
        return Target.of("klaviyo", self.client.base_url, ("list", self.container_ref),
                         ("property", self.settings.property_name))

    def dry_connect(self) -> None:
        self.container_ref = f"DRY-RUN:{self.settings.list_name}"

    def segment_field(self) -> str:
        return self.settings.property_name

    def record_sql(self, action: str) -> str:
        if not self.mappings:
            return kl.profile_item_sql(self.settings.property_name)
        ms = self.mappings
        std = members_sql([m for m in ms if m.kind == "standard"], with_nulls=True)
        loc = members_sql([m for m in ms if m.kind == "location"], with_nulls=True)
        custom = [m for m in ms if m.kind == "custom"]
        seg = (f"CASE WHEN held IS DISTINCT FROM segments THEN "
               f"{sql_string(json.dumps(self.settings.property_name, ensure_ascii=False) + ':')} || segments END")
        unset = cleared_names_sql(custom)
        return ("""('{"type":"profile","attributes":{"email":' || to_json(email)::VARCHAR"""
                f" || coalesce(',' || {std}, '')"
                f""" || coalesce(',"location":{{' || {loc} || '}}', '')"""
                f""" || ',"properties":{{' || concat_ws(',', {seg}, {members_sql(custom, with_nulls=False)}) || '}}}}'"""
                f""" || coalesce(',"meta":{{"patch_properties":{{"unset":' || {unset} || '}}}}', '')"""
                " || '},')")

    def build_request(self, action: str, payload: bytes) -> bytes:
        # records end with ","; clears never (re-)add anyone to the list
        return kl.import_body_joined(payload[:-1], self.container_ref if action == UPSERT else None)

    def submit(self, action: str, body: bytes) -> str:
        assert self.client is not None
        return self.client.submit_import(body)

    def wait(self, handle: str) -> kl.ImportJob:
        assert self.client is not None
        return self.client.wait_import(handle)

    def outcome(self, job: kl.ImportJob) -> Outcome:
        assert self.client is not None
        errors = self.client.import_errors(job.id) if job.failed else []
        named = {e.email.strip().lower(): e.reason for e in errors if e.email}
        return Outcome(named, counted=job.failed, unattributed=sum(1 for e in errors if not e.email),
                       ref=f"job {job.id}")

    def remove(self, emails: Sequence[str]) -> None:
        assert self.client is not None
        ids = self.client.profile_ids(list(emails))
        if ids:
            self.client.remove_from_list(self.container_ref, sorted(ids.values()))

    def dry_removal(self, emails: Sequence[str]) -> bytes:
        return json.dumps({"list": self.container_ref, "emails": list(emails)}, indent=1).encode()

    def dry_run_name(self, action: str, index: int) -> str:
        return f"{action}-{index:05d}.json"

    def summary(self) -> dict[str, object]:
        return {"list_name": self.settings.list_name, "property_name": self.settings.property_name}

    # -- erasure (issue 15) -------------------------------------------------------------------
    #: profiles looked up per call (``any(email,[...])`` takes 100 values)
    erase_batch = kl.MAX_FILTER_VALUES
    #: how long :meth:`erase` keeps checking for the deleted profiles to disappear (seconds);
    #: what is still found then is ``done`` and checked again on the next run
    erase_wait_seconds: float = 30.0

    def erase(self, emails: Sequence[str], known: Sequence[str] = ()) -> dict[str, Erasure]:
        """Klaviyo's data-privacy deletion job per address (``POST /api/data-privacy-deletion-jobs``,
        one profile identifier per request, 60 per minute: :meth:`KlaviyoClient.request_deletion`),
        for the addresses a profile lookup (``GET /api/profiles?filter=any(email,[...])``) finds;
        an address no profile has is confirmed at once. Klaviyo deletes asynchronously and sends
        no confirmation, so a deletion is confirmed when the lookup no longer finds the profile
        (checked for up to :attr:`erase_wait_seconds`, then again on the next run)."""
        assert self.client is not None
        out: dict[str, Erasure] = {}
        found = {e.strip().lower() for e in self.client.profile_ids(list(emails))}
        asked: set[str] = set()
        for email in emails:
            if email not in found:
                out[email] = Erasure("confirmed", "no Klaviyo profile has this address")
                continue
            try:
                self.client.request_deletion(email)
            except EspAuthError:
                raise
            except EspError as exc:
                out[email] = Erasure("failed", str(exc).replace(email, "<address>")[:500])
                continue
            asked.add(email)
        deadline = time.monotonic() + self.erase_wait_seconds
        delay = 0.2
        while asked:
            still = {e.strip().lower() for e in self.client.profile_ids(sorted(asked))}
            for email in asked - still:
                out[email] = Erasure("confirmed", "deletion job accepted; the profile is no longer found")
            asked &= still
            if not asked or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        for email in asked:
            out[email] = Erasure("done", "deletion job accepted (202); the profile is still found: checked again "
                                         "on the next run")
        return out
