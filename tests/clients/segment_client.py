"""Drives nudge with Segment's official Python library, unchanged: segment-analytics-python.

Usage: segment_client.py HOST WRITE_KEY USER_ID [gzip]

Sends an identify (email, timezone) and a track through `segment.analytics` in sync mode, which
posts to HOST/v1/batch with HTTP Basic auth (and a gzip body when asked). Exits non-zero when the
library reports an error, so the Rust test sees refusals.
"""

import sys

from segment import analytics


def main() -> int:
    host, write_key, user = sys.argv[1:4]
    errors = []
    analytics.write_key = write_key
    analytics.host = host
    analytics.sync_mode = True
    analytics.gzip = len(sys.argv) > 4 and sys.argv[4] == "gzip"
    analytics.max_retries = 0
    analytics.on_error = lambda error, batch: errors.append(error)

    analytics.identify(user, {"email": f"{user}@example.com", "timezone": "Europe/Berlin", "plan": "pro"})
    analytics.track(user, "Order Completed", {"revenue": 42.5, "items": 3}, message_id=f"{user}-order")
    analytics.flush()
    if errors:
        print(f"segment client errors: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
