"""Time values as the tools and PostgreSQL give them, read one way everywhere.

pgBackRest reports Unix times, WAL-G ISO 8601 with ``Z``, PostgreSQL ``timestamptz`` values (or
their text), the run's params free text: :func:`utc` turns any of them into an aware UTC datetime.
"""

from __future__ import annotations

from datetime import datetime, timezone

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def utc(value) -> datetime | None:
    """An aware UTC datetime from a Unix time, a datetime or an ISO 8601 text; None for None or "".

    A naive value is taken as UTC (PostgreSQL's ``timestamptz`` text always has its offset).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        # PostgreSQL writes '+00' for the offset; Python 3.11 reads it, older ones want '+00:00'.
        dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def epoch(value) -> float | None:
    """Unix time of :func:`utc`'s reading (for metrics)."""
    dt = utc(value)
    return dt.timestamp() if dt else None


def iso(value) -> str | None:
    dt = utc(value)
    return dt.isoformat() if dt else None


def weekday(day: datetime) -> str:
    """``mon`` .. ``sun`` of ``day`` in UTC."""
    return WEEKDAYS[utc(day).weekday()]


def now() -> datetime:
    return datetime.now(timezone.utc)


def last_slot(schedule: str, at: datetime | None = None) -> datetime:
    """The latest time at or before ``at`` (default: now) that the cron ``schedule`` fires."""
    from croniter import croniter  # Airflow's own cron parser

    at = utc(at) if at else now()
    if croniter.match(schedule, at):
        return at.replace(second=0, microsecond=0)
    return utc(croniter(schedule, at).get_prev(datetime))


def fixed_time(schedule: str) -> tuple[int, int] | None:
    """(hour, minute) of a cron line that fires at one fixed time of day (``15 2 * * *``,
    ``0 2 * 1,4,7,10 0#1``); None when its minute or hour is a list, range or step."""
    fields = schedule.split()
    if len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    return int(fields[1]), int(fields[0])


def shifted(schedule: str, minutes: int) -> str:
    """``schedule`` fired ``minutes`` later, the same days (the caller keeps a restricted-day line
    before midnight: :func:`fixed_time` + the shift < 24 h); a line with no fixed time is returned as is."""
    at = fixed_time(schedule)
    if at is None or not minutes:
        return schedule
    total = (at[0] * 60 + at[1] + minutes) % 1440
    return " ".join([str(total % 60), str(total // 60), *schedule.split()[2:]])
