"""How a token is known without being kept: its SHA-256. The verified-token cache looks a
token up by it, and the log's ``token_fp`` is its first six bytes, so the two always agree."""

from __future__ import annotations

import hashlib


def token_bytes(text: str) -> bytes:
    """``text`` as UTF-8, for hashing. A lone surrogate (a header's undecodable byte, as
    aiohttp decodes them, or anything a caller of the Python API passes) is encoded as one too
    (``surrogatepass``): every string has bytes, and no two strings share them."""
    return text.encode("utf-8", "surrogatepass")


def token_digest(token: str) -> bytes:
    """The SHA-256 of the token's :func:`token_bytes`."""
    return hashlib.sha256(token_bytes(token)).digest()
