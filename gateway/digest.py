"""How a token is known without being kept: its SHA-256. The verified-token cache looks a
token up by it, and the log's ``token_fp`` is its first six bytes, so the two always agree."""

from __future__ import annotations

import hashlib


def token_digest(token: str) -> bytes:
    """The SHA-256 of the bytes the token came as: its UTF-8, a byte that is not UTF-8 given
    back from the surrogate aiohttp decoded it to (``surrogateescape``), so that an operator
    who hashes what was sent finds the same. A string no request can carry (a lone surrogate
    of another kind, from a caller of the Python API) is hashed from its ``surrogatepass``
    bytes instead of raising: it is never a token that checked out."""
    try:
        data = token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = token.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).digest()
