"""Local JWT access-token validation (RFC 7519, RFC 9068, RFC 8725 best practices).

The token's unverified ``iss`` only selects which issuer's keys to try; everything else is
decided after the signature checks out against that issuer's own keys. The result is a
:class:`VerifiedToken` or a :class:`Denial` with one reason from the closed set.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import string
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry

from gateway.digest import token_digest
from gateway.observe.metrics import Metrics

from ..decision import Denial, VerifiedToken
from .claims import claim_type_denial, lifetime_denial, malformed, parse_scopes
from .expiring import ExpiringLru
from .jwks import KeySet, KeySource, SigningKey

# joserfc warns on every EdDSA verification that RFC 9864 deprecates the name "EdDSA" for
# "Ed25519"; identity providers still sign with "EdDSA" and operators allow it explicitly in
# `algorithms`, so the warning would only fill the logs, once per request.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

# Tokens remembered after a good signature check (about 1-2 KiB each).
VERIFIED_CACHE_SIZE = 10_000
# Decoded token headers remembered, and what each allows (an issuer's tokens share a few).
HEADERS_REMEMBERED = 256

# Matched with `fullmatch`: `$` would also accept a trailing newline ("abc\n"), which
# base64 decoding then silently drops, so two different strings would read as one segment.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# What a compact JWS is made of: base64url segments and the two dots between them.
_COMPACT_CHARS = (string.ascii_letters + string.digits + "-_.").encode("ascii")
# Headers we understand. `crit` naming anything is refused: we implement no extension (RFC 7515
# §4.1.11), and `b64: false` (RFC 7797) would change what the signature covers.
_KNOWN_CRIT: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """What the verifier needs of one configured issuer."""

    name: str
    issuer: str
    algorithms: frozenset[str]
    leeway: float
    token_type: str | None
    scope_claim: str
    keys: KeySource
    registry: JWSRegistry


def issuer_keys(
    name: str,
    issuer: str,
    algorithms: Collection[str],
    leeway: float,
    token_type: str | None,
    scope_claim: str,
    keys: KeySource,
) -> IssuerKeys:
    return IssuerKeys(
        name=name,
        issuer=issuer,
        algorithms=frozenset(algorithms),
        leeway=leeway,
        token_type=normalize_media_type(token_type) if token_type else None,
        scope_claim=scope_claim,
        keys=keys,
        registry=_registry(algorithms),
    )


# The longest signature checked: a longer one is refused as invalid before any key is tried.
# (joserfc's own bounds, a header over 512 bytes and a signature over 1024, would refuse a good
# token whose issuer adds an `x5c` chain, ignored here and never trusted; the token is parsed
# here, not by joserfc, so neither applies.) The whole token is already bounded by
# `max_token_bytes` before it gets here.
_MAX_SIGNATURE_BYTES = 64 * 1024


def _registry(algorithms: Collection[str]) -> JWSRegistry:
    return JWSRegistry(algorithms=list(algorithms), strict_check_header=False)


def normalize_media_type(value: str) -> str:
    """RFC 7515 §4.1.9: ``typ`` may omit the ``application/`` prefix; compare without case."""
    value = value.strip().lower()
    return value.removeprefix("application/")


def _decode_segment(segment: str) -> dict[str, Any] | None:
    """A base64url (unpadded, RFC 7515 §2) JSON object, or None. Duplicate member names are
    refused (RFC 7515 §5.2) so that no two parsers can read different values."""
    if not _SEGMENT.fullmatch(segment):
        return None
    return _decode_json(segment)


def _decode_json(segment: str) -> dict[str, Any] | None:
    """``_decode_segment`` for a segment already known to hold only base64url characters."""
    try:
        text = _b64decode(segment)
        value = _compact_json(text)
        if value is None:
            # UTF-8 only (RFC 7519 §7.2), so a byte order mark or UTF-16 is refused, not
            # guessed.
            value = _JSON.decode(text.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a few thousand `[` fit in `max_token_bytes` and exhaust the JSON
        # parser's stack; that is a malformed token, not a server error.
        return None
    return value if isinstance(value, dict) else None


def _compact_json(text: bytes) -> Any:
    """``text`` read by orjson (in a fifth of the json module's time) when it is exactly how
    orjson writes what it read, else None: then the json module must judge it. orjson keeps the
    last of two members of one name, but a text that dropped a member cannot be what orjson
    writes back, so a text that is has no duplicate. Most tokens are written so (compact, no
    escapes an encoder need not make); whitespace, other number forms, and everything orjson
    refuses (NaN, integers past 64 bits, invalid UTF-8) go to the json module, whose verdict is
    the one that counts."""
    try:
        value = orjson.loads(text)
        return value if orjson.dumps(value) == text else None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None


@lru_cache(maxsize=HEADERS_REMEMBERED)
def _header(segment: str) -> tuple[dict[str, Any] | None, Denial | None]:
    """A header segment decoded (``_decode_segment``) and what is wrong with it
    (``_check_header``), remembered: an issuer's tokens share a few headers (``alg``, ``kid``,
    ``typ``), so each is parsed and checked once, not once a token. The dict is shared, and
    never changed."""
    header = _decode_segment(segment)
    return header, None if header is None else _check_header(header)


def _b64decode(segment: str) -> bytes:
    """A segment of base64url characters only (or empty): what
    ``base64.urlsafe_b64decode`` does, without its three Python functions around binascii."""
    padded = (segment + "=" * (-len(segment) % 4)).encode("ascii")
    return binascii.a2b_base64(padded.translate(_FROM_URLSAFE), strict_mode=False)


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _no_constants(name: str) -> Any:
    # `NaN` and `Infinity` are not JSON (RFC 8259 §6); Python accepts them by default, and an
    # `exp` of NaN would compare as never expired.
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


# Made once: ``json.loads`` with these hooks builds a new decoder for every token.
_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a compact JWT claims, before anything is verified: only ever used to pick
    which issuer's rules apply, never trusted."""
    parts = token.split(".")
    payload = _decode_segment(parts[1]) if len(parts) == 3 else None
    iss = payload.get("iss") if payload is not None else None
    return iss if isinstance(iss, str) else None


class _Verified:
    """A token whose signature checked out, and the key that checked it (never changed: a
    new entry replaces it). A plain class: compiled, its ``__init__`` is native code."""

    __slots__ = ("expires", "key", "published", "token", "valid_from")

    def __init__(
        self,
        token: VerifiedToken,
        key: SigningKey,
        published: KeySet,  # the issuer's key set in which ``key`` was last seen
        expires: float,  # when the entry goes: ``exp`` plus the issuer's leeway
        # From when its lifetime is surely good (``nbf`` and ``iat`` less the leeway, and an
        # ``exp`` there at all; else never, and lifetime_denial says why each time).
        valid_from: float,
    ) -> None:
        self.token = token
        self.key = key
        self.published = published
        self.expires = expires
        self.valid_from = valid_from


SignatureCheck = Callable[[JWSAlgModel, bytes, bytes, SigningKey], bool]


def signature_ok(algorithm: JWSAlgModel, signed: bytes, signature: bytes, key: SigningKey) -> bool:
    """Whether ``signature`` over ``signed`` checks out with ``key`` (an algorithm of
    :meth:`JwtVerifier._signers_for`'s, already allowed for the key)."""
    try:
        return bool(algorithm.verify(signed, signature, key.key))
    except (JoseError, ValueError, TypeError):
        return False


class JwtVerifier:
    """Checks JWT access tokens against the configured issuers.

    A token whose signature once checked out is remembered (by its SHA-256, never the token
    itself) so that the next request with it costs no signature check; the remembered result
    is used only while the key that checked it is still published, and its lifetime is judged
    again on every request.
    """

    def __init__(
        self,
        issuers: Mapping[str, IssuerKeys],
        clock: Callable[[], float] = time.time,
        *,
        metrics: Metrics | None = None,
        cache_size: int = VERIFIED_CACHE_SIZE,
        signature_check: SignatureCheck | None = None,
    ) -> None:
        """``signature_check``: how a signature is checked (:func:`signature_ok`, unless a
        test counts the checks)."""
        self._issuers = issuers
        self._signature_ok = signature_check if signature_check is not None else signature_ok
        self._by_iss: dict[str, list[IssuerKeys]] = {}
        for keys in issuers.values():
            self._by_iss.setdefault(keys.issuer, []).append(keys)
        self._clock = clock
        self._metrics = metrics
        self._verified: ExpiringLru[bytes, _Verified] = ExpiringLru(cache_size, clock)
        # What a header allows for an issuer, while its key set is the one published: by the
        # issuer's name and the header segment (_signers).
        self._signers: dict[tuple[str, str], tuple[KeySet, _Signers]] = {}
        self._hits = metrics.token_cache.labels("jwt", "hit") if metrics else None
        self._misses = metrics.token_cache.labels("jwt", "miss") if metrics else None

    def cached(
        self,
        digest: bytes,
        allowed: Collection[str] | None = None,
        *,
        check_lifetime: bool = True,
    ) -> VerifiedToken | Denial | None:
        """The answer for a token that checked out before (its lifetime judged now), or None
        when it has to be verified: the hot path, with no parsing and no signature check, in
        one function (each call it made took as long as the check in it). ``digest`` is the
        token's ``token_digest``. A hit is counted here; a miss by :meth:`verify`."""
        entry = self._verified.get(digest)
        if entry is None:
            return None
        verified = entry.token
        issuer = self._issuers.get(verified.issuer)
        if issuer is None or (allowed is not None and issuer.name not in allowed):
            return None
        keys = issuer.keys
        if keys.stale:
            return None  # verify() says why (503)
        published = keys.keys
        if published is not entry.published:
            # The key set changed since: a key withdrawn from the JWKS (rotated out,
            # revoked) takes its tokens with it.
            if not any(key is entry.key for key in published.keys):
                return None
            renewed = _Verified(verified, entry.key, published, entry.expires, entry.valid_from)
            self._verified.put(digest, renewed, entry.expires)
        if self._hits is not None:
            assert self._metrics is not None
            self._metrics.tally.inc(self._hits)
        # Not expired, or the cache would have dropped it: whether it is valid yet is all
        # that is left to judge, and lifetime_denial says why not, when it is not.
        if check_lifetime and self._clock() < entry.valid_from:
            return self.lifetime_denial(verified.issuer, verified.claims) or verified
        return verified

    async def verify(
        self,
        token: str,
        allowed: Collection[str] | None = None,
        *,
        check_lifetime: bool = True,
        digest: bytes | None = None,
    ) -> VerifiedToken | Denial:
        """Validate ``token``; ``allowed`` restricts which issuer names may have issued it.

        ``check_lifetime=False`` (for ``gateway explain``) returns an expired token's claims so
        that every other reason can be reported too; see :meth:`lifetime_denial`. ``digest``
        is the token's ``token_digest``, when the caller has it already.
        """
        digest = digest or token_digest(token)
        if (known := self.cached(digest, allowed, check_lifetime=check_lifetime)) is not None:
            return known
        return await self.verify_new(token, digest, allowed, check_lifetime=check_lifetime)

    async def verify_new(
        self,
        token: str,
        digest: bytes,
        allowed: Collection[str] | None = None,
        *,
        check_lifetime: bool = True,
    ) -> VerifiedToken | Denial:
        """:meth:`verify` for a token just looked for with :meth:`cached` and not found there
        (a miss, counted here): parsed and checked, and remembered if it checks out."""
        if self._misses is not None:
            assert self._metrics is not None
            self._metrics.tally.inc(self._misses)
        # Base64url characters and dots, nothing else (one pass over the token, so its
        # segments need no pattern of their own).
        if not token.isascii() or token.encode("ascii").translate(None, _COMPACT_CHARS):
            return malformed()
        parts = token.split(".")
        if len(parts) != 3:
            # Five segments would be JWE; JSON serialisation has no dots at all: neither is
            # accepted (SPEC: compact JWS only). An empty signature is let through to be
            # refused by its `alg` (`none`: disallowed_alg) or by the signature check.
            return malformed()
        header, header_problem = _header(parts[0])
        payload = _decode_json(parts[1])
        if header is None or payload is None:
            return malformed()
        iss = payload.get("iss")
        if not isinstance(iss, str):
            return malformed("the token has no valid issuer")
        candidates = [k for k in self._by_iss.get(iss, ()) if allowed is None or k.name in allowed]
        if not candidates:
            return Denial("wrong_issuer", "the token's issuer is not accepted here")
        if header_problem is not None:
            return header_problem
        if (problem := claim_type_denial(payload)) is not None:
            return problem
        last: Denial | None = None
        for issuer in candidates:
            result = await self._verify_with(issuer, token, parts[0], header, payload)
            if isinstance(result, _Verified):
                self._verified.put(digest, result, result.expires)
                # Within [valid_from, expires) the lifetime is surely good, as in `cached`;
                # anywhere else lifetime_denial says whether it is, and why not.
                if (
                    check_lifetime
                    and not result.valid_from <= self._clock() < result.expires
                    and (problem := self.lifetime_denial(issuer.name, payload))
                ):
                    return problem
                return result.token
            last = result
        assert last is not None
        return last

    async def _verify_with(
        self,
        issuer: IssuerKeys,
        token: str,
        segment: str,
        header: dict[str, Any],
        payload: dict[str, Any],
    ) -> _Verified | Denial:
        """The signature, the key's algorithm and the token type: what never changes for a
        given token (its lifetime is judged by the caller, every time). ``segment``: the
        token's header segment, which ``header`` was decoded from."""
        signing_input, _, signature = token.rpartition(".")
        signers = await self._signers_for(issuer, segment, header)
        if isinstance(signers, Denial):
            return signers
        try:
            raw_signature = _b64decode(signature)
        except binascii.Error:  # a length no encoding has
            return _INVALID_SIGNATURE
        if len(raw_signature) > _MAX_SIGNATURE_BYTES:
            return _INVALID_SIGNATURE
        signed = signing_input.encode("ascii")  # what the signature covers, for every key tried
        signer = next(
            (
                key
                for key, algorithm in signers.keys
                if self._signature_ok(algorithm, signed, raw_signature, key)
            ),
            None,
        )
        if signer is None:
            return _INVALID_SIGNATURE
        if not signers.typ_ok:
            # RFC 9068 §4 / RFC 8725 §3.11: an ID token must not pass as an access token.
            return Denial("wrong_type", "the token is not of the required type")
        verified = VerifiedToken(
            issuer=issuer.name,
            claims=payload,
            scopes=parse_scopes(payload, issuer.scope_claim),
        )
        # `exp`, `nbf` and `iat` are numbers where present (claim_type_denial, first).
        expires, valid_from = math.inf, math.inf
        exp: Any = payload.get("exp")
        if exp is not None:
            expires = exp + issuer.leeway
            nbf, iat = payload.get("nbf"), payload.get("iat")
            starts = (-math.inf if nbf is None else nbf, -math.inf if iat is None else iat)
            valid_from = max(starts) - issuer.leeway
        return _Verified(verified, signer, issuer.keys.keys, expires, valid_from)

    async def _signers_for(
        self, issuer: IssuerKeys, segment: str, header: dict[str, Any]
    ) -> _Signers | Denial:
        """The keys that may have signed a token with this header (``segment``, decoded), each
        with the algorithm it verifies with, and whether the header's ``typ`` is the one
        required; or why none may. Worked out once per header while the issuer's key set stays
        the same: an issuer's tokens share a few headers."""
        alg = header["alg"]
        if alg not in issuer.algorithms:
            return Denial("disallowed_alg", "the token's signing algorithm is not allowed")
        store = issuer.keys
        if store.stale:
            # Past `max_stale` without a good fetch: the token may be good, but the keys may
            # have been revoked meanwhile (SPEC §3 `max_stale`: 503, never 401).
            return Denial("unavailable", "the issuer's keys are out of date", retry_after=5)
        memo_key = (issuer.name, segment)
        memo = self._signers.get(memo_key)
        if memo is not None and memo[0] is store.keys:
            return memo[1]
        keys = await self._keys_for(store, header.get("kid"), alg)
        if isinstance(keys, Denial):
            return keys  # not remembered: an unknown kid must ask the issuer again next time
        registry = issuer.registry
        if not _header_ok(registry, header):
            return _INVALID_SIGNATURE
        usable = [(key, a) for key in keys if (a := _key_algorithm(registry, key, alg)) is not None]
        typ = header.get("typ")
        signers = _Signers(
            keys=tuple(usable),
            typ_ok=issuer.token_type is None
            or (isinstance(typ, str) and normalize_media_type(typ) == issuer.token_type),
        )
        if len(self._signers) >= HEADERS_REMEMBERED:
            self._signers.clear()
        # The key set the keys came from: _keys_for read it last, after any refresh.
        self._signers[memo_key] = (store.keys, signers)
        return signers

    @staticmethod
    async def _keys_for(store: KeySource, kid: str | None, alg: str) -> list[SigningKey] | Denial:
        if kid is not None:
            named = store.keys.all_by_kid.get(kid)
            if named is None:
                await store.refresh_for_unknown_kid()
                named = store.keys.all_by_kid.get(kid)
            if named is None:
                return _no_key(store)
            usable = [key for key in named if key.can_verify(alg)]
            if not usable:
                return Denial("disallowed_alg", "the token's algorithm does not match its key")
            return usable
        candidates = store.keys.candidates(alg)
        if not candidates:
            await store.refresh_for_unknown_kid()
            candidates = store.keys.candidates(alg)
        return candidates or _no_key(store)

    def lifetime_denial(self, issuer_name: str, payload: Mapping[str, Any]) -> Denial | None:
        """Why the token is outside its validity window (with the issuer's leeway), or None."""
        leeway = self._issuers[issuer_name].leeway
        return lifetime_denial(payload, leeway=leeway, now=self._clock(), require_exp=True)


def _no_key(store: KeySource) -> Denial:
    if not store.loaded:
        # The token may be good: we just cannot check it now (SPEC §4: 503, never 401).
        return Denial("unavailable", "the issuer's keys cannot be loaded now", retry_after=5)
    return Denial("unknown_key", "the token's signing key is unknown")


_INVALID_SIGNATURE = Denial("invalid_signature", "the token's signature is invalid")


@dataclass(frozen=True, slots=True)
class _Signers:
    """What a token header allows for an issuer (:meth:`JwtVerifier._signers_for`)."""

    keys: tuple[tuple[SigningKey, JWSAlgModel], ...]  # each with its algorithm
    typ_ok: bool  # the header's `typ` is the issuer's `token_type`, or none is required


def _header_ok(registry: JWSRegistry, header: dict[str, Any]) -> bool:
    """Whether the header's registered members pass the issuer's registry (joserfc's
    ``check_header``, which ``deserialize_compact`` would run)."""
    try:
        registry.check_header(header)
    except (JoseError, ValueError, TypeError):
        return False
    return True


def _key_algorithm(registry: JWSRegistry, key: SigningKey, alg: str) -> JWSAlgModel | None:
    """The registry's algorithm for ``alg`` if the registry allows it and ``key`` may be used
    with it (joserfc's ``get_alg`` and ``check_key``: the key's type, ``use`` and ``alg``)."""
    try:
        algorithm = registry.get_alg(alg)
        algorithm.check_key(key.key)
    except (JoseError, ValueError, TypeError):
        return None
    return algorithm


def _check_header(header: dict[str, Any]) -> Denial | None:
    alg = header.get("alg")
    if not isinstance(alg, str):
        return malformed()
    if "crit" in header:
        crit = header["crit"]
        # A member that is not a string (`"crit": [[]]`) is malformed too, and must not reach
        # the set lookup: a list is unhashable, and the TypeError would be a 500.
        if (
            not isinstance(crit, list)
            or not crit
            or any(not isinstance(c, str) or c not in _KNOWN_CRIT for c in crit)
        ):
            return malformed("the token requires an unsupported extension")
    if "b64" in header or "enc" in header or "zip" in header:
        return malformed("only compact signed tokens are accepted")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        return malformed()
    # `jku`, `x5u`, `jwk` and `x5c` are deliberately ignored: keys come from the issuer's
    # configured source only (RFC 8725 §3.10), never from the token itself.
    return None
