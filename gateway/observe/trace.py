"""W3C Trace Context (https://www.w3.org/TR/trace-context/): a request's trace id, for its log line.

``traceparent`` and ``tracestate`` are end-to-end headers: the gateway forwards them unchanged and
only reads the trace id, from a header that is valid by §3.2, so that nothing a client made up is
ever logged raw.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# version "-" trace-id "-" parent-id "-" trace-flags, lowercase hex only (§3.2.2).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VERSION_00_LENGTH = 55


def trace_id(traceparent: Sequence[str]) -> str | None:
    """The 32-hex trace id of the request's ``traceparent`` header values, or None when there is
    not exactly one valid one."""
    if len(traceparent) != 1:
        return None
    value = traceparent[0].strip(" \t")
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace, parent, _ = match.groups()
    if version == "ff":  # §3.2.2.1: forbidden
        return None
    if len(value) != _VERSION_00_LENGTH and (version == "00" or value[_VERSION_00_LENGTH] != "-"):
        # Version 00 is exactly 55 characters; a later version may add fields after a dash.
        return None
    if trace == "0" * 32 or parent == "0" * 16:  # §3.2.2.3, §3.2.2.4: all zeros are invalid
        return None
    return trace
