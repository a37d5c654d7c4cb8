"""Query-string parsing for the API: every bad value becomes a 400 naming the parameter."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

from infersight.gateway.errors import GatewayError
from infersight.store.schema import GROUPABLE

_DURATION = re.compile(r"([0-9]+)([smhd])")  # ASCII digits only: str.isdigit() also takes '²', int() not
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")  # ASCII only, as _INTEGER
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_MAX_DIGITS = 18  # longer is out of any range here; int() of 4300+ digits raised ValueError (a 500)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=36_600)
"""Longest window, resolution or staleness (100 years): larger values overflowed datetime arithmetic
(a 500) or the store's interval types (an internal error echoed to the caller)."""
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime.max.replace(tzinfo=timezone.utc)
"""Times are clamped to [EARLIEST, LATEST] (nothing is stored before 1970): ``since=0001-01-01`` keeps
meaning "from the start", where a window or staleness subtracted from it, or a year-9999 time with a
negative offset moved to UTC, raised OverflowError (a 500 without the error shape)."""
MAX_LIST_LIMIT = 1000
"""Largest page of ``GET /requests``."""
STATUS_RANGE = (100, 599)
GROUP_ALIASES = {"tenant": "tenant_id", "model": "model_id", "use_case": "use_case", "backend": "backend"}


def bad_param(name: str, why: str) -> GatewayError:
    return GatewayError(400, f"Invalid value for '{name}': {why}", code="invalid_value", param=name)


def check_order(since: datetime | None, until: datetime | None, before_1970: bool = False) -> None:
    """``since`` must be before ``until``. ``before_1970``: a window wholly before 1970 passes (both
    ends clamp to EARLIEST, so they compare equal however they were written; nothing is stored there).
    Only wholly: ``since=2026-11-20&until=1026-11-21`` (a mistyped year) is refused, not an empty page."""
    if since is not None and until is not None and since >= until \
            and not (before_1970 and since == until == EARLIEST):
        raise bad_param("since", "must be before until")


class Params:
    def __init__(self, query_string: bytes) -> None:
        parsed = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
        self.raw = {k: v[-1] for k, v in parsed.items()}
        self.repeated = [k for k, v in parsed.items() if len(v) > 1]

    def check(self, accepted: frozenset[str]) -> None:
        """Refuse names the endpoint does not read, and names given twice: ignoring either answered
        a query the caller did not ask (``/requests?window=5m`` listed everything; of
        ``model=a&model=b`` only b was applied)."""
        unknown = [name for name in self.raw if name not in accepted]
        if unknown:
            takes = ", ".join(sorted(accepted)) or "no parameters"
            raise bad_param(unknown[0][:64], f"unknown parameter; this endpoint takes {takes}")
        if self.repeated:
            raise bad_param(self.repeated[0], "given more than once; pass one value (lists are comma-separated)")

    def text(self, name: str) -> str | None:
        value = self.raw.get(name)
        return value if value else None

    def integer(self, name: str, default: int | None = None, low: int = 0, high: int = 1 << 31) -> int | None:
        value = self.raw.get(name)
        if not value:
            return default
        if not _INTEGER.fullmatch(value):
            raise bad_param(name, "must be an integer")
        number = int(value) if len(value.lstrip("-")) <= _MAX_DIGITS else None
        if number is None or not low <= number <= high:
            raise bad_param(name, f"must be between {low} and {high}")
        return number

    def number(self, name: str) -> float | None:
        """A finite decimal number (``2``, ``0.5``, ``-1e3``); nan, inf and anything else are a 400."""
        value = self.raw.get(name)
        if not value:
            return None
        if not _NUMBER.fullmatch(value):
            raise bad_param(name, "must be a number, e.g. 2 or 0.5")
        number = float(value)
        if not math.isfinite(number):
            raise bad_param(name, "must be a finite number")
        return number

    def boolean(self, name: str) -> bool | None:
        value = self.raw.get(name)
        if not value:
            return None
        if value.lower() not in _BOOLEANS:
            raise bad_param(name, "must be true or false")
        return _BOOLEANS[value.lower()]

    def time(self, name: str) -> datetime | None:
        value = self.raw.get(name)
        if not value:
            return None
        try:
            parsed = datetime.fromisoformat(value.replace(" ", "+"))
        except ValueError:
            raise bad_param(name, "must be an ISO 8601 time, e.g. 2026-11-22T07:00:00Z") from None
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        try:
            utc = parsed.astimezone(timezone.utc)
        except OverflowError:  # past datetime's range once the offset is applied
            return EARLIEST if parsed.year < 5000 else LATEST
        return EARLIEST if utc < EARLIEST else parsed

    def duration(self, name: str) -> timedelta | None:
        value = self.raw.get(name)
        if not value:
            return None
        match = _DURATION.fullmatch(value)
        if not match or not match.group(1).strip("0"):
            raise bad_param(name, "must look like 30s, 5m, 1h or 1d")
        digits, unit = match.groups()
        seconds = int(digits) * _UNITS[unit] if len(digits) <= _MAX_DIGITS else None
        if seconds is None or seconds > MAX_DURATION.total_seconds():
            raise bad_param(name, f"must be at most {MAX_DURATION.days}d")
        return timedelta(seconds=seconds)

    def window(self, default: timedelta) -> tuple[datetime, datetime]:
        """``since``/``until``, or ``window`` back from ``until`` (default now). ``since`` with
        ``window`` is refused: the window was ignored, and the answer ran from ``since`` to now."""
        until = self.time("until") or datetime.now(timezone.utc)
        since = self.time("since")
        window = self.duration("window")
        if since is not None and window is not None:
            raise bad_param("window", "give since or window, not both (until with window moves the window back)")
        if since is None:
            since = until - (window or default)
        check_order(since, until)
        return since, until

    def group_by(
        self, name: str = "group_by", allowed: tuple[str, ...] = GROUPABLE, always: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        """Columns to group by. ``always``: names accepted but implied (e.g. dimension for quality)."""
        value = self.raw.get(name)
        if not value:
            return ()
        columns = []
        for part in value.split(","):
            column = GROUP_ALIASES.get(part.strip(), part.strip())
            if column in always:
                continue
            if column not in allowed:
                names = ", ".join([*(k for k, v in GROUP_ALIASES.items() if v in allowed), *always])
                raise bad_param(name, f"'{part}' is not one of {names}")
            if column not in columns:
                columns.append(column)
        return tuple(columns)
