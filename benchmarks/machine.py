"""What every benchmark prints before and after its figures: when, on what machine, under what
load, and where the figures are recorded (docs/benchmarks.md, one section per benchmark). A figure
without these cannot be compared with another; the scripts write nothing into the repository."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

RECORD = "docs/benchmarks.md"


def context(section: str, record: str = RECORD) -> str:
    one, five, fifteen = os.getloadavg()
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
            f"({platform.machine()}, Linux {platform.release()}), load average {one:.1f} / {five:.1f} / {fifteen:.1f}; "
            f"record the figures with this line in {record}#{section}")


def print_context(section: str, record: str = RECORD) -> None:
    print(f"[bench] {context(section, record)}", flush=True)
