"""Run ids and timestamps: UTC, RFC 3339, parsed with any number of fractional digits."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Optional

# -- ids and timestamps ---------------------------------------------------------------------

RUN_ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
_TIMESTAMP_PATTERN = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$"
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339, UTC, always six fractional digits: `2026-11-21T11:26:48.123456+00:00`."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def now_timestamp() -> str:
    return format_timestamp(utc_now())


def parse_timestamp(text: str) -> datetime:
    """Parse RFC 3339 with any number of fractional digits (upstream writes nine).

    `datetime.fromisoformat` before 3.11 rejects anything but 3 or 6 digits, so this parses by
    hand. A missing offset means UTC.
    """
    if not isinstance(text, str):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    match = _TIMESTAMP_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    offset = timezone.utc
    if sign is not None and not zulu:
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        offset = timezone(delta if sign == "+" else -delta)
    return datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micros, offset
    )


def duration_ms(started_at: str, finished_at: str) -> int:
    delta = parse_timestamp(finished_at) - parse_timestamp(started_at)
    return max(0, int(delta.total_seconds() * 1000))


def new_run_id(moment: Optional[datetime] = None) -> str:
    moment = (moment or utc_now()).astimezone(timezone.utc)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def is_run_id(text: object) -> bool:
    return isinstance(text, str) and RUN_ID_PATTERN.fullmatch(text) is not None
