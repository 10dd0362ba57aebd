"""Where the bearer token comes from: the Authorization header (RFC 6750 §2.1), and only there.

A token sent twice (two headers, or header plus ``access_token`` in the query or form body) is a
malformed request (RFC 6750 §2: "MUST NOT use more than one method"): if the copies differ, which
one would the upstream believe?
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from urllib.parse import unquote_plus

from .decision import Denial

# A urlencoded form on a protected route is read whole to look for a second token (RFC 6750
# §2.2); larger ones are refused (413) rather than buffered.
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
FORM_SCAN_BYTES = 1024 * 1024

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_CHARS = (string.ascii_letters + string.digits + "-._~+/").encode("ascii")


def is_b64token(token: str) -> bool:
    """Whether ``token`` is a b64token: one C loop over the bytes (a regular expression took
    twice as long over a typical 800-character JWT)."""
    body = token.rstrip("=")
    return bool(body) and body.isascii() and not body.encode().translate(None, _B64TOKEN_CHARS)


def extract_bearer(
    authorization: Sequence[str],
    *,
    query_has_token: bool,
    max_token_bytes: int,
    check_alphabet: bool = True,
) -> str | Denial:
    """The bearer token from the request's Authorization header values, or why there is none.

    ``query_has_token`` says whether ``access_token`` appears in the query string (or a form
    body); it is never accepted, and is an error next to a header token. ``check_alphabet=False``
    leaves the b64token check to the verifier (``TokenVerifier.verify``), which makes it only
    for a token it has not already verified.
    """
    if len(authorization) > 1:
        return Denial("invalid_request", "more than one Authorization header")
    if not authorization:
        if query_has_token:
            return Denial("invalid_request", "send the token in the Authorization header")
        return Denial("missing_token", "an access token is required")
    scheme, _, rest = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        if query_has_token:
            return Denial("invalid_request", "send the token in the Authorization header")
        return Denial("missing_token", "a Bearer access token is required")
    token = rest.strip()
    if not token:
        return Denial("invalid_request", "the Bearer scheme was sent without a token")
    if query_has_token:
        return Denial("invalid_request", "the token was sent in more than one place")
    # Before any parsing: a huge token must cost nothing (SPEC `max_token_bytes`).
    if len(token) > max_token_bytes:
        return Denial("malformed_token", "the token is too long")
    if check_alphabet and not is_b64token(token):
        return not_b64token()
    return token


def not_b64token() -> Denial:
    return Denial("malformed_token", "the token is malformed")


def carries_access_token(urlencoded: str) -> bool:
    """Whether a query string or urlencoded form names ``access_token`` (RFC 6750 §2.2-2.3),
    as any framework behind the gateway might read it: names are percent-decoded, ``;`` also
    separates pairs (old Rack, Python 2), and PHP's ``access.token``, ``access token`` and
    ``access_token[]`` count too."""
    for pair in re.split("[&;]", urlencoded):
        name = unquote_plus(pair.partition("=")[0])
        name = name.partition("[")[0].replace(".", "_").replace(" ", "_")
        if name == "access_token":
            return True
    return False
