"""A token's digest: the verified-token cache's key and the log's fingerprint, for any string."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.digest import token_digest
from gateway.observe.logs import digest_fingerprint, token_fingerprint
from gateway.pipeline.verify.token_cache import cache_key

# Any string at all, lone surrogates included: st.text() leaves them out of any alphabet of
# characters (even one that names them), so they come in as code points.
ANY_TEXT = st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr))


@given(ANY_TEXT)
def test_every_string_has_a_digest_lone_surrogates_included(text: str) -> None:
    assert len(token_digest(text)) == 32


@given(ANY_TEXT)
def test_no_two_strings_are_hashed_from_the_same_bytes(text: str) -> None:
    # The bytes give the string back: two strings never share them, so never a cache entry.
    hashed = text.encode("utf-8", "surrogatepass")
    assert token_digest(text) == hashlib.sha256(hashed).digest()
    assert hashed.decode("utf-8", "surrogatepass") == text


@given(st.text())
def test_a_token_is_hashed_from_its_utf8_as_an_operator_would_hash_it(text: str) -> None:
    assert token_digest(text) == hashlib.sha256(text.encode()).digest()


@given(ANY_TEXT)
def test_the_log_fingerprint_is_the_start_of_the_cache_digest(text: str) -> None:
    assert token_fingerprint(text) == digest_fingerprint(token_digest(text))
    assert token_fingerprint(text) == token_digest(text).hex()[:12]


@given(ANY_TEXT)
def test_every_string_has_an_introspection_cache_key(text: str) -> None:
    assert (
        cache_key("https://issuer.example", text)
        == token_digest(f"https://issuer.example\0{text}").hex()
    )
