"""Which of an upstream's response header lines reach the client (RFC 9110 §7.6.1): every one
but the hop-by-hop headers and those the upstream's ``Connection`` header names, in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.headers import HOP_BY_HOP, end_to_end_lines, response_head_lines

NAMES = st.sampled_from(
    [*HOP_BY_HOP, "Connection", "CONNECTION", "X-Secret", "x-secret", "X-Kept", "Content-Type"]
).map(str.encode)
TOKENS = st.lists(
    st.sampled_from([b"keep-alive", b"close", b"X-Secret", b" x-secret ", b"Upgrade", b""]),
    max_size=3,
).map(b",".join)
VALUES = st.sampled_from([b"v", b"text/plain", b""])


LINES = st.lists(
    st.one_of(
        st.tuples(NAMES, VALUES),
        st.tuples(st.sampled_from([b"Connection", b"connection"]), TOKENS),
    ),
    max_size=8,
)


@given(LINES)
def test_only_end_to_end_lines_are_kept_in_their_order(lines: list[tuple[bytes, bytes]]) -> None:
    named = {
        token.strip().lower()
        for name, value in lines
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    dropped = {name.encode() for name in HOP_BY_HOP} | named
    expected = [(name, name.lower(), value) for name, value in lines if name.lower() not in dropped]
    assert end_to_end_lines(lines) == expected


def test_a_header_named_by_connection_is_dropped_in_any_case() -> None:
    lines = [
        (b"Connection", b"keep-alive, X-Secret"),
        (b"x-secret", b"for the next hop only"),
        (b"X-Kept", b"yes"),
    ]
    assert end_to_end_lines(lines) == [(b"X-Kept", b"x-kept", b"yes")]


@given(LINES, st.sets(st.sampled_from([b"x-secret", b"content-type", b"x-kept"])))
def test_a_whole_answer_head_has_exactly_the_end_to_end_lines_not_rewritten(
    lines: list[tuple[bytes, bytes]], rewritten: set[bytes]
) -> None:
    # The one-pass version the whole-answer path uses must drop what end_to_end_lines drops,
    # a header named by Connection included, wherever that header comes.
    kept = [line for line in end_to_end_lines(lines) if line[1] not in rewritten]
    pieces, names = response_head_lines(lines, frozenset(rewritten))
    assert pieces == [piece for n, _, v in kept for piece in (n, b": ", v, b"\r\n")]
    assert names == {lower for _, lower, _ in kept}
