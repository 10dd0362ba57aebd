"""How a token is known without being kept: its SHA-256. The verified-token cache looks a
token up by it, and the log's ``token_fp`` is its first six bytes, so the two always agree."""

from __future__ import annotations

import hashlib


def token_digest(token: str) -> bytes:
    """The SHA-256 of the token's UTF-8. A lone surrogate (a header's undecodable byte, as
    aiohttp decodes them, or anything a caller of the Python API passes) is encoded as one too
    (``surrogatepass``): every string has a digest, and no two strings share the bytes hashed."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
