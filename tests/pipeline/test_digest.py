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


@given(st.binary())
def test_a_token_is_hashed_from_the_bytes_it_was_sent_as(sent: bytes) -> None:
    # What an operator does with a token a user shows them: hash its bytes, search the logs.
    # aiohttp decodes a header's bytes that are not UTF-8 to surrogates (surrogateescape).
    token = sent.decode("utf-8", "surrogateescape")
    assert token_digest(token) == hashlib.sha256(sent).digest()


@given(st.binary(), st.binary())
def test_two_tokens_sent_as_different_bytes_never_share_a_digest(a: bytes, b: bytes) -> None:
    same = token_digest(a.decode("utf-8", "surrogateescape")) == token_digest(
        b.decode("utf-8", "surrogateescape")
    )
    assert same == (a == b)


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
