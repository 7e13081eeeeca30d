"""One erasure pass in a child process, so a test can SIGKILL it mid-propagation.

``python -m segment_pipeline_tests.fakes.erasure_child <warehouse> <klaviyo url> <dotdigital url>``
runs :func:`segment_pipeline.core.privacy.erasure.propagate` (our production code path) against
the fakes, with the tests' short retry policy.
"""

from __future__ import annotations

import json
import sys

from segment_pipeline.core.privacy.erasure import propagate
from segment_pipeline.core.sync.destinations.dotdigital import DotdigitalDestination, DotdigitalSettings
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from segment_pipeline_tests.fakes.helpers import dotdigital_client, klaviyo_client


def destinations(klaviyo_url: str, dotdigital_url: str, klaviyo_wait: float = 5.0) -> dict:
    """Klaviyo and dotdigital adapters on the fakes (Klaviyo waits ``klaviyo_wait`` s for deletions)."""
    k = KlaviyoDestination(klaviyo_client(klaviyo_url), KlaviyoSettings())
    k.erase_wait_seconds = klaviyo_wait
    return {"klaviyo": k, "dotdigital": DotdigitalDestination(dotdigital_client(dotdigital_url), DotdigitalSettings())}


if __name__ == "__main__":
    wh_root, klaviyo_url, dotdigital_url = sys.argv[1:4]
    report = propagate(wh_root, destinations(klaviyo_url, dotdigital_url))
    print(json.dumps(report.metadata()))
