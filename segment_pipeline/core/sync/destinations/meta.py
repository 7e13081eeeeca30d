"""Meta: one customer-file Custom Audience per synced segment, members identified by hashed email.

Why one audience per segment: a Custom Audience holds members only (no property to carry segment
names), and advertisers target, exclude and build lookalikes per audience, so each synced segment
maps to the audience of the same name in the ad account (created when missing, ``subtype=CUSTOM``,
``customer_file_source=USER_PROVIDED_ONLY``). The engine runs this destination once per synced
segment (``Capabilities.audience_per_segment``): the desired state of one segment is "these emails
are members", each audience is its own mirror target
(``meta|<url>/act_<id>|audience=<id>|members=<id>``) whose mirror holds membership only
(``property_upsert=False``: nothing in ``held``), an upsert adds a desired non-member
(``POST /<audience>/users``) and a leaver is removed (``list_remove``: ``DELETE /<audience>/users``).
So a first sync adds every member, a daily run adds the joiners and removes the leavers of each
audience, and an unchanged day sends nothing. (Mirroring per audience reuses the engine's diff,
batching, confirmation and run history unchanged; Klaviyo and dotdigital do not see the change.)

Identifiers: only ``sha256(lowercase(trimmed email))`` as lowercase hex, rendered by DuckDB
(:func:`segment_pipeline.core.sync.hashing.meta_email_hash_sql`, Meta's rule and example cited
there), schema ``EMAIL_SHA256`` in the single-key form ``{"schema": "EMAIL_SHA256", "data":
[<hash>, ...]}``. No raw email is ever in a request, a dry-run file or an error.

Limits and their sources (``segment_pipeline_tests/fakes/specs/meta/FACTS.md``): at most 10,000
records per users call ("only a maximum of 10000 at a time",
https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users); the ad
account's ``custom_audience`` Business Use Case limit per hour, 5,000 (development tier) or
190,000 (standard) + 40 x active audiences, at most 700,000
(https://developers.facebook.com/docs/marketing-apis/rate-limiting); we pace by
``SEGMENT_PIPELINE_META_CALLS_PER_HOUR`` (default 5,000). Per-row outcome: Meta answers counts
only (``num_received``, ``num_invalid_entries``), never which rows; our hashes are always valid,
so invalid entries would be a fault we cannot attribute: the batch is left unconfirmed and sent
again next run (``unconfirmed`` in the run's metadata), and a ``num_received`` short of the batch
is treated the same way.

Not done: a whole-audience replacement (``/usersreplace`` with ``session`` fields) is not used;
an audience whose members were changed outside this tool is corrected only for the emails our
mirror knows. A segment whose toggle is switched off keeps its audience as it was (delete or empty
it in Ads Manager if no longer wanted), as does a renamed segment's old audience.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segment_pipeline.core.esp import meta as mt
from segment_pipeline.core.esp.http import EspAuthError, EspError
from segment_pipeline.core.sync.diff import UPSERT
from segment_pipeline.core.sync.engine import Capabilities, Destination, Erasure, Limits, Option, Outcome
from segment_pipeline.core.sync.hashing import meta_email_hash, meta_email_hash_sql
from segment_pipeline.core.sync.state import Target


@dataclass(frozen=True)
class MetaSettings:
    audience_prefix: str = ""  # audience name = prefix + segment name
    records_per_call: int = mt.MAX_USERS_PER_CALL
    #: users calls in flight at once (each answers in about a second, processing is Meta's)
    max_in_flight: int = 4


class MetaDestination(Destination):
    name = "meta"
    title = "Meta"
    description = ("Meta custom audiences (one per synced segment, named after it), members added and removed "
                   "by SHA-256 hashed email.")
    capabilities = Capabilities(property_upsert=False, list_add=True, list_remove=True, audience_per_segment=True)
    options = (
        Option("access_token", "META_ACCESS_TOKEN", secret=True,
               help="system user access token with ads_management on the ad account"),
        Option("ad_account_id", "META_AD_ACCOUNT_ID", "", help="numeric ad account id (act_ prefix optional)"),
        Option("base_url", "META_BASE_URL", mt.DEFAULT_BASE_URL),
        Option("api_version", "META_API_VERSION", mt.DEFAULT_API_VERSION, help="Graph API version path"),
        Option("audience_prefix", "SEGMENT_PIPELINE_META_AUDIENCE_PREFIX", "",
               help="prefix of the audience names (audience = prefix + segment name)"),
        Option("calls_per_hour", "SEGMENT_PIPELINE_META_CALLS_PER_HOUR", mt.DEFAULT_CALLS_PER_HOUR,
               help="custom_audience calls per hour the client paces to"),
    )
    cron_env, cron = "SEGMENT_PIPELINE_META_SYNC_CRON", "0 7 * * *"
    freshness_hours = 26

    client: mt.MetaClient | None
    settings: MetaSettings

    @classmethod
    def client_from(cls, options: Mapping[str, Any]) -> mt.MetaClient | None:
        if not (options["access_token"] and options["ad_account_id"]):
            return None
        return mt.MetaClient(options["access_token"], options["ad_account_id"], base_url=options["base_url"],
                             api_version=options["api_version"], calls_per_hour=int(options["calls_per_hour"]))

    @classmethod
    def settings_from(cls, options: Mapping[str, Any]) -> MetaSettings:
        return MetaSettings(audience_prefix=options["audience_prefix"])

    def limits(self) -> Limits:
        s = self.settings
        return Limits(records_per_request=s.records_per_call,
                      bytes_per_request=s.records_per_call * mt.RECORD_BYTES + 1024, request_overhead=1024,
                      value=None, rate_limits=self.client.limits if self.client else {}, concurrent_jobs=None,
                      in_flight=s.max_in_flight, removals_per_request=s.records_per_call)

    def audience_name(self) -> str:
        assert self.segment is not None, "meta syncs one segment's audience at a time"
        return self.settings.audience_prefix + self.segment[1]

    def connect(self) -> Target:
        assert self.client is not None
        self.container_ref = self.client.ensure_audience(
            self.audience_name(), f"Members of the segment {self.segment[1] if self.segment else ''!r}, kept in sync")
        # the mirror holds each audience's members under the audience itself
        return Target.of("meta", self.client.account_url, ("audience", self.container_ref),
                         ("members", self.container_ref))

    def dry_connect(self) -> None:
        self.container_ref = f"DRY-RUN:{self.audience_name()}"

    def record_sql(self, action: str) -> str:
        return f"""('"' || {meta_email_hash_sql('email')} || '",')"""

    def build_request(self, action: str, payload: bytes) -> bytes:
        return mt.users_body(payload[:-1])

    def submit(self, action: str, body: bytes) -> tuple[int, mt.UsersResult]:
        assert self.client is not None
        sent = (len(body) - len(mt.USERS_HEAD) - len(mt.USERS_TAIL) + 1) // mt.RECORD_BYTES  # fixed-size records
        return sent, self.client.users("POST" if action == UPSERT else "DELETE", self.container_ref, body)

    def wait(self, handle: tuple[int, mt.UsersResult]) -> tuple[int, mt.UsersResult]:
        return handle  # the users endpoint answers synchronously; matching is Meta's, later

    def outcome(self, finished: tuple[int, mt.UsersResult]) -> Outcome:
        sent, result = finished
        short = max(0, sent - result.received)
        return Outcome({}, counted=result.invalid + short, unattributed=result.invalid + short,
                       ref=f"audience {result.audience_id} session {result.session_id}")

    def remove(self, emails: Sequence[str]) -> None:
        """Remove leavers from the segment's audience (``DELETE /<audience>/users``), hashed here
        (a removal batch is small: the day's leavers of one audience)."""
        assert self.client is not None
        body = self.dry_removal(emails)
        result = self.client.users("DELETE", self.container_ref, body)
        if result.received != len(emails) or result.invalid:
            raise EspError(f"meta DELETE /{self.container_ref}/users: Meta received {result.received} of "
                           f"{len(emails)} hashes ({result.invalid} invalid); the removal is retried next run")

    def dry_removal(self, emails: Sequence[str]) -> bytes:
        return mt.users_body(",".join(f'"{meta_email_hash(e)}"' for e in emails).encode())

    def dry_run_name(self, action: str, index: int) -> str:
        return f"{'add' if action == UPSERT else 'remove'}-{index:05d}.json"

    def summary(self) -> dict[str, object]:
        return {"audience": self.audience_name() if self.segment else None,
                "ad_account_id": self.client.ad_account_id if self.client else None}

    # -- erasure (issue 15) -------------------------------------------------------------------
    erase_batch = 1_000

    def audiences_known(self, known: Sequence[str]) -> list[str]:
        """The ids of this ad account's audiences among the mirror's containers
        (``meta|<url>/act_<id>|audience=<audience id>``)."""
        assert self.client is not None
        head = f"meta|{self.client.account_url}|audience="
        return sorted({c[len(head):] for c in known if c.startswith(head) and c[len(head):]})

    def erase(self, emails: Sequence[str], known: Sequence[str] = ()) -> dict[str, Erasure]:
        """Remove the addresses' hashes from every audience this sync ever created or filled in the
        ad account (``known``: the mirror's audiences; ``DELETE /{audience}/users``, schema
        ``EMAIL_SHA256``, up to 10,000 per call). Removing a hash that is not a member is harmless.
        Meta deletes no person (a Custom Audience holds hashes only) and offers no way to read an
        audience's members back, so "confirmed" is Meta's answer receiving every hash for every
        audience (``num_received``, no invalid entries); a short answer is ``failed`` and retried."""
        assert self.client is not None
        audiences = self.audiences_known(known)
        if not audiences:
            return {e: Erasure("confirmed", "no audience of this ad account was ever synced") for e in emails}
        body = self.dry_removal(emails)
        for audience in audiences:
            try:
                result = self.client.users("DELETE", audience, body)
            except EspAuthError:
                raise
            except EspError as exc:
                return {e: Erasure("failed", f"audience {audience}: {exc}"[:500]) for e in emails}
            if result.received != len(emails) or result.invalid:
                return {e: Erasure("failed", f"audience {audience}: Meta received {result.received} of {len(emails)} "
                                             f"hashes ({result.invalid} invalid)") for e in emails}
        return {e: Erasure("confirmed", f"hash removed from {len(audiences)} audience(s); Meta received every hash")
                for e in emails}
