"""Inputs gpuhours can use but does not ship, found only where the user points to them.

DeepSeek's profile-data trace (github.com/deepseek-ai/profile-data, train.json) is the measurement the `trace-h800`
profile was derived from; its repository carries no licence, so the trace is not in this one. The profile stores
what gpuhours needs from it (trace.measured); re-deriving the profile, or the tests that parse the trace itself,
need the file: set GPUHOURS_PROFILE_TRACE to its path. The reference sheet of DeepSeek-V3's published figures
used by one cross-check is found through GPUHOURS_REFERENCE_SHEET the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

TRACE_ENV = "GPUHOURS_PROFILE_TRACE"
REFERENCE_ENV = "GPUHOURS_REFERENCE_SHEET"


def _file(env: str) -> Path | None:
    value = os.environ.get(env)
    return Path(value) if value and Path(value).is_file() else None


def profile_trace() -> Path | None:
    """DeepSeek's profile-data train.json where GPUHOURS_PROFILE_TRACE points, else None."""
    return _file(TRACE_ENV)


def reference_sheet() -> Path | None:
    """The DeepSeek-V3 reference sheet where GPUHOURS_REFERENCE_SHEET points, else None."""
    return _file(REFERENCE_ENV)


TRACE_ABSENT = (f"DeepSeek's profile-data trace is not shipped (no licence); set {TRACE_ENV} to its train.json "
                f"to run this")
REFERENCE_ABSENT = f"the DeepSeek-V3 reference sheet is not shipped; set {REFERENCE_ENV} to run this"
