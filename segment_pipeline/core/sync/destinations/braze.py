"""Braze: an array custom attribute (``nosto_segment`` by default) holding the segment names, set with
``POST /users/track`` (client: :mod:`segment_pipeline.core.esp.braze`, whose docstring cites each
vendor fact; the test fake's ``FACTS.md`` lists them with their pages).

**Identity.** Users are identified by email: each attributes object carries ``"email"`` as its
identifier, as /users/track documents ("Update a user profile by email address",
https://www.braze.com/docs/api/endpoints/user_data/post_user_track/). Braze then updates the
profile that has this email (when several have it, the most recently updated one with an
``external_id``, else the most recently updated one) and only when *no* profile has the email
creates one, email-only (same page, "Frequently asked questions"). So an existing user, whether
created by the SDK with an ``external_id`` or by an import, is never duplicated, and a repeated or
retried request finds the profile the first one created. We never send ``user_alias`` objects
(an alias-only profile is a second profile beside an SDK user with the same email) nor
``_update_existing_only: true`` (Braze would drop unknown emails without naming them, so the
mirror would record values no profile holds). The mirror is keyed by REST endpoint and attribute
name (``braze|<endpoint>|identify=email|attribute=<name>``).

**Changes are deltas where the previous value is known.** Braze documents setting an array
attribute whole (``"attr": ["A", "B"]``) and changing it with ``{"add": [...]}`` /
``{"remove": [...]}`` (both in one object, as its example ``{"add": [..], "remove": [..]}``), and
asks integrations to "only pass deltas (changing data)" (post_user_track). Array attributes are
sets: adding a present value only moves it to the end (user_attributes_object, "Custom attribute
data types"), so an add or remove sent twice (a retry, a batch resent after a crash) leaves the
same set. Hence:

* a profile whose value the mirror has confirmed gets ``{"add": <new names>, "remove": <names it
  left>}``: only what changed, robust to retries;
* a profile with no confirmed value (first sync, a new attribute name, another workspace) gets the
  whole array, because what it holds is unknown (a previous tool may have left names there) and
  only a full set makes it exactly the desired list;
* a profile in no synced segment any more gets ``null``: "To remove a profile attribute, set it to
  null" (user_attributes_object).

Braze keeps an array's elements in the order they were added, so after deltas the array is the
desired *set* of names, not necessarily sorted.

**Limits.** At most 75 attributes objects per request (``objects_per_request``; 50 on Monthly
Active Users CY 24-25 contracts), 4 MB per request, 3,000 requests per 3 s
(``requests_per_3s``, raise it if Braze raised yours). An array holds 25 elements unless raised in
the dashboard (``max_array_length``), and Braze *truncates* longer arrays silently, so values are
fitted before sending (:class:`~segment_pipeline.core.sync.diff.ValueFit` counting names: whole
names kept in alphabetical order up to the limit, the rest recorded as dropped and counted in
``truncated``).

**Per-row outcome.** The answer's ``errors`` entries name refused objects by ``index``; those rows
are rejected with Braze's reason (and retried next run), every other row of the request is
confirmed. An entry without an index makes the batch unconfirmed (sent again next run).

**Mapped fields** (:mod:`segment_pipeline.core.sync.mappings`): standard attributes
(``first_name``, ``home_city``, ``dob``, ...) and custom attributes ride in the same attributes
object, only those that changed; a clear is ``null`` ("To remove a profile attribute, set it to
null", user_attributes_object). With mappings the segment attribute is left out of an object
whose names did not change ("only pass deltas", post_user_track).

**Never sent:** ``email_subscribe``, ``push_subscribe``, ``subscription_groups`` or any other
consent field (a mapping to one is refused when the mappings are loaded): only the email
identifier, our one attribute and the mapped fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segment_pipeline.core.esp import braze as bz
from segment_pipeline.core.esp.http import EspAuthError, EspError
from segment_pipeline.core.sync.diff import CLEAR, ValueFit
from segment_pipeline.core.sync.engine import Capabilities, Destination, Erasure, Limits, Option, Outcome
from segment_pipeline.core.sync.fields import members_sql
from segment_pipeline.core.sync.state import Target
from segment_pipeline.core.warehouse import sql_string


@dataclass(frozen=True)
class BrazeSettings:
    attribute: str = "nosto_segment"
    objects_per_request: int = bz.MAX_OBJECTS_PER_REQUEST
    max_array_length: int = bz.DEFAULT_MAX_ARRAY_LENGTH
    #: Requests sent and not yet answered: /users/track answers at once, so this only has to cover
    #: the round trip (3,000 requests per 3 s at ~30 ms each is ~30 at once).
    max_in_flight: int = 32
    requests_per_3s: int = bz.DEFAULT_REQUESTS_PER_WINDOW
    #: Answered requests are recorded in the mirror together, this many rows (or 1 s) at a time:
    #: one state transaction per 75-row request would cost more than the request.
    confirm_rows: int = 7_500

    def __post_init__(self) -> None:
        if not 1 <= self.objects_per_request <= bz.MAX_OBJECTS_PER_REQUEST:
            raise ValueError(f"braze objects_per_request must be 1..{bz.MAX_OBJECTS_PER_REQUEST}, "
                             f"got {self.objects_per_request}")
        if self.max_array_length < 1:
            raise ValueError(f"braze max_array_length must be at least 1, got {self.max_array_length}")
        if not self.attribute or self.attribute.startswith("$"):
            raise ValueError(f"braze attribute must be a custom attribute name, got {self.attribute!r}")


def _one_char_per_name(names: Any) -> str:
    return "n" * len(names)


@dataclass(frozen=True)
class _Sent:
    body: bytes
    result: bz.TrackResult


class BrazeDestination(Destination):
    name = "braze"
    title = "Braze"
    description = "Braze nosto_segment array custom attribute (users identified by email), for the synced segments."
    capabilities = Capabilities(property_upsert=True, list_add=False, list_remove=False)
    options = (
        Option("api_key", "BRAZE_API_KEY", secret=True,
               help="REST API key with the users.track permission (users.export.ids, users.delete to erase)"),
        Option("rest_endpoint", "BRAZE_REST_ENDPOINT", "",
               help="the workspace's REST endpoint, e.g. https://rest.iad-01.braze.com"),
        Option("attribute", "SEGMENT_PIPELINE_BRAZE_ATTRIBUTE", "nosto_segment", help="array custom attribute"),
        Option("max_array_length", "SEGMENT_PIPELINE_BRAZE_MAX_ARRAY_LENGTH", bz.DEFAULT_MAX_ARRAY_LENGTH,
               help="the attribute's maximum array length in the Braze dashboard"),
        Option("objects_per_request", "SEGMENT_PIPELINE_BRAZE_OBJECTS_PER_REQUEST", bz.MAX_OBJECTS_PER_REQUEST,
               help="attributes objects per /users/track request (75; 50 on MAU CY 24-25 contracts)"),
        Option("requests_per_3s", "SEGMENT_PIPELINE_BRAZE_RATE_LIMIT", bz.DEFAULT_REQUESTS_PER_WINDOW,
               help="the workspace's /users/track limit per 3 seconds"),
        Option("max_in_flight", "SEGMENT_PIPELINE_BRAZE_IN_FLIGHT", 32, help="requests sent and not yet answered"),
    )
    cron_env, cron = "SEGMENT_PIPELINE_BRAZE_SYNC_CRON", "30 6 * * *"
    freshness_hours = 26

    client: bz.BrazeClient | None
    settings: BrazeSettings

    @classmethod
    def client_from(cls, options: Mapping[str, Any]) -> bz.BrazeClient | None:
        if not options["api_key"]:
            return None
        return bz.BrazeClient(options["api_key"], options["rest_endpoint"],
                              limits={bz.FAMILY: [(int(options["requests_per_3s"]), bz.WINDOW_SECONDS)]},
                              pool_size=int(options["max_in_flight"]) + 4)

    @classmethod
    def settings_from(cls, options: Mapping[str, Any]) -> BrazeSettings:
        return BrazeSettings(attribute=options["attribute"], objects_per_request=int(options["objects_per_request"]),
                             max_array_length=int(options["max_array_length"]),
                             max_in_flight=int(options["max_in_flight"]),
                             requests_per_3s=int(options["requests_per_3s"]))

    def limits(self) -> Limits:
        s = self.settings
        return Limits(records_per_request=s.objects_per_request, bytes_per_request=bz.MAX_BODY_BYTES,
                      request_overhead=bz.REQUEST_OVERHEAD_BYTES,
                      value=ValueFit(s.max_array_length, _one_char_per_name, "json_array_length(segments)", "name"),
                      rate_limits={bz.FAMILY: [(s.requests_per_3s, bz.WINDOW_SECONDS)]},
                      concurrent_jobs=None, in_flight=s.max_in_flight, confirm_rows=s.confirm_rows)

    def connect(self) -> Target:
        assert self.client is not None
        self.container_ref = "email"  # no list: users are found by email (the module docstring says how)
        return Target.of("braze", self.client.base_url, ("identify", "email"), ("attribute", self.settings.attribute))

    def dry_connect(self) -> None:
        self.container_ref = "email"

    def segment_field(self) -> str:
        return self.settings.attribute

    def record_sql(self, action: str) -> str:
        if action == CLEAR or not self.mappings:
            return bz.attributes_object_sql(self.settings.attribute, clear=action == CLEAR)
        key = sql_string(json.dumps(self.settings.attribute, ensure_ascii=False) + ":")
        seg = f"CASE WHEN held IS DISTINCT FROM segments THEN {key} || {bz.segments_value_sql()} END"
        body = f"NULLIF(concat_ws(',', {seg}, {members_sql(self.mappings, with_nulls=True)}), '')"
        return f"""('{{"email":' || to_json(email)::VARCHAR || coalesce(',' || {body}, '') || '}},')"""

    def build_request(self, action: str, payload: bytes) -> bytes:
        return bz.track_body(payload[:-1])  # records end with ","

    def submit(self, action: str, body: bytes) -> _Sent:
        assert self.client is not None
        return _Sent(body, self.client.track(body))

    def wait(self, handle: _Sent) -> _Sent:
        return handle  # /users/track answers synchronously

    def outcome(self, sent: _Sent) -> Outcome:
        errors = sent.result.errors
        if not errors:
            return Outcome(ref="users/track")
        emails = bz.emails_of(sent.body)
        named: dict[str, str] = {}
        unattributed = 0
        for e in errors:
            email = emails[e.index] if e.index is not None and 0 <= e.index < len(emails) else None
            if email:
                named[email] = e.reason
            else:
                unattributed += 1
        return Outcome(named, counted=len(errors), unattributed=unattributed, ref="users/track")

    def dry_run_name(self, action: str, index: int) -> str:
        return f"{action}-{index:05d}.json"

    def summary(self) -> dict[str, object]:
        return {"attribute": self.settings.attribute, "identify_by": "email",
                "max_array_length": self.settings.max_array_length}

    # -- erasure (issue 15) -------------------------------------------------------------------
    erase_batch = 50

    def erase(self, emails: Sequence[str], known: Sequence[str] = ()) -> dict[str, Erasure]:
        """Per address: find every user profile with it (``POST /users/export/ids`` with
        ``email_address``; none: confirmed), delete them by ``braze_ids`` (``POST /users/delete``,
        up to 50 per request) and look again: confirmed once the export finds none. Braze queues
        deletions (its answer counts the profiles "queued for deletion"), so a profile still
        exported is ``done`` and checked again on the next run. The key needs the
        ``users.export.ids`` and ``users.delete`` permissions besides ``users.track``
        (https://www.braze.com/docs/api/endpoints/user_data/post_user_delete/,
        https://www.braze.com/docs/api/endpoints/export/user_data/post_users_identifier/)."""
        assert self.client is not None
        out: dict[str, Erasure] = {}
        for email in emails:
            try:
                ids = self.client.user_ids(email)
                if not ids:
                    out[email] = Erasure("confirmed", "no Braze user profile has this address")
                    continue
                queued = self.client.delete_users(ids)
                if not self.client.user_ids(email):
                    out[email] = Erasure("confirmed", f"{len(ids)} user profile(s) deleted; no longer exported")
                else:
                    out[email] = Erasure("done", f"{queued} of {len(ids)} user profile(s) queued for deletion, still "
                                                 "exported: checked again on the next run")
            except EspAuthError:
                raise
            except EspError as exc:
                out[email] = Erasure("failed", str(exc).replace(email, "<address>")[:500])
        return out
