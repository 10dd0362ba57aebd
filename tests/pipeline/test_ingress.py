"""Tests for request path normalisation at ingress."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.pipeline import ingress
from gateway.pipeline.ingress import AmbiguousPath, normalize_path
from gateway.pipeline.recent import Recent

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

# Fragments that combine into tricky paths: dots, escapes of every kind, parameters, slashes.
FRAGMENTS = [
    "a",
    "b",
    "Z9",
    ".",
    "..",
    "/",
    "//",
    ";",
    ";x=y",
    "~",
    "-",
    "%2e",
    "%2E",
    "%61",
    "%7e",
    "%7E",
    "%20",
    "%25",
    "%3b",
    "%3B",
    "%c3%a9",
    "%41",
    ":@!$&'()*+,=",
]

raw_paths = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map(
    lambda parts: "/" + "".join(parts)
)


def outcome(raw: str) -> str | type[AmbiguousPath]:
    """Normalise, turning a rejection into a comparable value."""
    try:
        return normalize_path(raw)
    except AmbiguousPath:
        return AmbiguousPath


# --- Accepted paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/orders", "/orders"),
        ("/orders/", "/orders/"),
        ("//", "/"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2e/admin", "/admin"),
        ("/%61bc", "/abc"),
        ("/%7euser", "/~user"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/100%25", "/100%25"),
        ("/.well-known/jwks.json", "/.well-known/jwks.json"),
        ("/a/...", "/a/..."),
        ("/a/..b/.c", "/a/..b/.c"),
    ],
)
def test_a_valid_path_normalises_to_its_canonical_form(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


def test_a_trailing_slash_is_kept() -> None:
    assert normalize_path("/orders/") == "/orders/"
    assert normalize_path("/orders") == "/orders"


def test_reserved_escapes_stay_encoded_with_upper_case_hex() -> None:
    assert normalize_path("/a%3bb%3F%40") == "/a%3Bb%3F%40"


def test_an_escaped_dot_dot_segment_is_resolved_like_a_plain_one() -> None:
    assert normalize_path("/public/%2e%2e/admin") == normalize_path("/public/../admin") == "/admin"


# --- Rejected paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("orders", "start with '/'"),
        ("*", "start with '/'"),
        ("/a\x00b", "NUL"),
        ("/a%00b", "NUL"),
        ("/a\\b", "backslash"),
        ("/public\\..\\admin", "backslash"),
        ("/a%5Cb", "encoded backslash"),
        ("/a%5cb", "encoded backslash"),
        ("/a%2Fb", "encoded slash"),
        ("/a%2fb", "encoded slash"),
        ("/public/..%2fadmin", "encoded slash"),
        ("/a%zz", "invalid percent escape"),
        ("/a%", "invalid percent escape"),
        ("/a%4", "invalid percent escape"),
        ("/a%4g", "invalid percent escape"),
        ("/a/b/../../..", "above the root"),
        ("/..", "above the root"),
        ("/../x", "above the root"),
        ("/%2e%2e/x", "above the root"),
        ("/public/..;x=y/admin", "';'"),
        ("/public/..;/admin", "';'"),
        ("/public/.;x/admin", "';'"),
        ("/public/%2e%2e;x/admin", "';'"),
        ("/admin;jsessionid=x/users", "';'"),
        ("/admin;/users", "';'"),
    ],
)
def test_an_ambiguous_path_is_rejected_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(AmbiguousPath, match=re.escape(reason)):
        normalize_path(raw)


@pytest.mark.parametrize(
    "char", [*'\t\n\r\x7f "<>^`{|}[]?#', "\x01", "\x1f", "é", "\u2215", "\uff0f"]
)
def test_a_character_outside_the_rfc_3986_path_set_is_rejected(char: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalize_path(f"/a{char}b")


def test_the_rejection_message_does_not_echo_the_path() -> None:
    with pytest.raises(AmbiguousPath) as caught:
        normalize_path("/<script>%2F")
    assert "script" not in str(caught.value)


def test_ambiguous_path_is_a_value_error() -> None:
    assert issubclass(AmbiguousPath, ValueError)


# --- Properties -----------------------------------------------------------------------------


@given(raw_paths)
@example("/a/b/../../c/./d//")
def test_normalising_twice_changes_nothing(raw: str) -> None:
    result = outcome(raw)
    if isinstance(result, str):
        assert normalize_path(result) == result


@given(raw_paths)
def test_the_output_has_no_empty_or_dot_segments(raw: str) -> None:
    result = outcome(raw)
    if not isinstance(result, str):
        return
    assert result.startswith("/")
    assert "//" not in result
    assert "/./" not in result
    assert "/../" not in result
    assert not result.endswith("/.")
    assert not result.endswith("/..")
    for segment in result.split("/"):
        assert segment.partition(";")[0] not in (".", "..")


@given(raw_paths)
def test_the_output_has_no_encoded_separators_and_only_canonical_escapes(raw: str) -> None:
    result = outcome(raw)
    if not isinstance(result, str):
        return
    assert "\x00" not in result
    for escape in re.findall(r"%(..)", result):
        assert escape == escape.upper()
        assert escape not in ("2F", "5C", "00")
        assert chr(int(escape, 16)) not in UNRESERVED


@given(st.text(max_size=30))
def test_arbitrary_input_is_either_normalised_or_rejected_as_ambiguous(text: str) -> None:
    result = outcome("/" + text)
    if isinstance(result, str):
        assert result.isascii()
        assert re.fullmatch(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*", result)


@given(st.text(alphabet=UNRESERVED, min_size=1, max_size=20), st.data())
def test_decoding_unreserved_escapes_gives_the_same_path(plain: str, data: st.DataObject) -> None:
    encoded = "".join(
        data.draw(
            st.sampled_from([char, f"%{ord(char):02x}", f"%{ord(char):02X}"]),
            label=f"encoding of {char!r}",
        )
        for char in plain
    )
    assert outcome("/x/" + encoded) == outcome("/x/" + plain)


@given(
    st.lists(st.sampled_from(["a", "b", ".", "..", "%2e", "c;d", ""]), max_size=8),
    st.lists(st.integers(min_value=1, max_value=3), min_size=8, max_size=8),
)
def test_repeated_slashes_are_merged_before_anything_else(
    segments: list[str], widths: list[int]
) -> None:
    single = "".join("/" + segment for segment in segments)
    repeated = "".join(
        "/" * width + segment for segment, width in zip(segments, widths, strict=False)
    )
    assert outcome(repeated) == outcome(single) == outcome(re.sub("/+", "/", single))


FORBIDDEN = [*'\x00\\ "<>^`{|}\x7f', "%2F", "%5c", "%00", "%g0"]


@given(raw_paths, st.sampled_from(FORBIDDEN))
def test_a_forbidden_character_or_escape_anywhere_is_rejected(raw: str, bad: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalize_path(raw + bad)


@given(raw_paths)
def test_a_path_seen_before_gets_the_same_answer_as_the_first_time(raw: str) -> None:
    first, again = outcome(raw), outcome(raw)  # the second from the remembered forms
    assert first == again


def test_remembered_paths_are_bounded_and_long_ones_are_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingress, "_remembered", Recent(8))
    for n in range(100):
        assert normalize_path(f"/a/./{n}") == f"/a/{n}"
    assert len(ingress._remembered) == 8
    long_path = "/x/" + "y" * ingress.REMEMBERED_PATH_CHARS
    assert normalize_path(long_path) == long_path
    assert long_path not in ingress._remembered
    assert "/a/./99" in ingress._remembered and "/a/./0" not in ingress._remembered
