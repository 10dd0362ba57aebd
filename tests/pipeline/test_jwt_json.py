"""A token's JSON is read as the json module reads it, duplicates refused, however it is
written: the fast reader (orjson) decides only texts it would have written itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.verify.jwt import _decode_json
from tests.support import b64url


@dataclass
class Members:
    """A JSON object as written: its members in order, a name perhaps twice."""

    pairs: list[tuple[str, Any]]


def write(value: Any, compact: bool, ascii_only: bool) -> str:
    separators = (",", ":") if compact else (", ", ": ")
    if isinstance(value, Members):
        items = [
            f"{write(name, compact, ascii_only)}{separators[1]}{write(item, compact, ascii_only)}"
            for name, item in value.pairs
        ]
        return "{" + separators[0].join(items) + "}"
    if isinstance(value, list):
        return "[" + separators[0].join(write(item, compact, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity too: not JSON


# Lone surrogates too: written as `\ud800` escapes, or as bytes that are not UTF-8.
TEXT = st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=5)
NAMES = st.sampled_from(["sub", "exp", "aud", "é", ""]) | TEXT
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.lists(st.tuples(NAMES, inner), max_size=4).map(Members)
    ),
    max_leaves=12,
)
OBJECTS = st.lists(st.tuples(NAMES, VALUES), max_size=6).map(Members)
# What most tokens hold, and orjson writes back byte for byte: the fast reader's own texts.
PLAIN_NAMES = st.sampled_from(["sub", "exp", "aud", "é", ""]) | st.text(max_size=3)
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(st.tuples(PLAIN_NAMES, inner), max_size=4).map(Members)
    ),
    max_leaves=12,
)
PLAIN_OBJECTS = st.lists(st.tuples(PLAIN_NAMES, PLAIN), max_size=6).map(Members)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def constant(name: str) -> Any:
    raise ValueError(name)


def reference(data: bytes) -> str | None:
    """What the json module alone reads of UTF-8 (as the gateway did before orjson): compared
    as JSON written back, so that True is not taken for 1, nor 1.0 for 1."""
    decoder = json.JSONDecoder(object_pairs_hook=no_duplicates, parse_constant=constant)
    try:
        value = decoder.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError too; too deep: malformed
        return None
    return json.dumps(value) if isinstance(value, dict) else None


def read(data: bytes) -> str | None:
    value = _decode_json(b64url(data))
    return None if value is None else json.dumps(value)


def utf8(text: str) -> bytes:
    """``text`` as bytes, a lone surrogate as the bytes that are not UTF-8 it would be."""
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=500)
@given(OBJECTS, st.booleans(), st.booleans())
def test_a_payload_reads_as_the_json_module_reads_it(
    value: Members, compact: bool, ascii_only: bool
) -> None:
    data = utf8(write(value, compact, ascii_only))
    assert read(data) == reference(data)


@settings(max_examples=500)
@given(PLAIN_OBJECTS)
def test_a_compact_payload_reads_as_the_json_module_reads_it(value: Members) -> None:
    data = utf8(write(value, compact=True, ascii_only=False))
    assert read(data) == reference(data)


def test_a_compact_payload_naming_a_member_twice_is_refused() -> None:
    # Written as orjson writes, but for the second `sub`: the fast reader must not decide it.
    assert read(b'{"sub":"alice","exp":1,"sub":"admin"}') is None
    assert read(b'{"sub":"alice","act":{"sub":"a","sub":"b"}}') is None


def test_a_compact_payload_reads_as_its_members() -> None:
    assert read(utf8('{"sub":"alice","exp":1796670576,"aud":["a","b"],"x":1.5,"é":null}')) == (
        '{"sub": "alice", "exp": 1796670576, "aud": ["a", "b"], "x": 1.5, "\\u00e9": null}'
    )


def test_a_payload_nested_deeper_than_orjson_writes_reads_as_the_json_module_reads_it() -> None:
    # orjson reads 1,024 levels but writes 254: between the two, the json module decides.
    for depth in (253, 254, 255, 300, 1100):
        data = b'{"sub":"alice","deep":' + b"[" * depth + b"]" * depth + b"}"
        assert read(data) == reference(data)
    assert read(b'{"deep":' + b"[" * 300 + b"]" * 300 + b"}") is not None
