"""The configuration file's schema: frozen, typed models (SPEC §3).

This module is the one source of truth for the file's shape: validation, error messages and
``gateway schema`` all come from these models. Checks that need more than one field of the file
(names that must exist, routes shadowed by earlier ones) live in :mod:`gateway.config.compile`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    WithJsonSchema,
    model_validator,
)

from gateway.upstream.headers import RESERVED_REQUEST_HEADERS

# The sign is accepted here only so that "-5s" is reported as negative rather than as unreadable.
_DURATION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``250ms``, ``30s``, ``15m``, ``24h`` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 250ms, 30s, 15m, 24h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (found := _DURATION.match(value)):
        seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    else:
        raise ValueError("a duration is a number of seconds or a string like 250ms, 30s, 15m, 24h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: 250ms, 30s, 15m, 24h, or a number of seconds",
        }
    ),
]

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_METHOD = re.compile(r"^[A-Z]+$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_CLAIM_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def _identity_header_name(value: str) -> str:
    _header_name(value)
    # Compared as the stripper compares them: CGI and WSGI read `_` as `-`.
    if value.lower().replace("_", "-") in RESERVED_REQUEST_HEADERS:
        raise ValueError(
            f"{value!r} cannot be an identity header: the gateway sets, removes or frames the "
            "request with it, and a token's claim must not"
        )
    return value


def _method(value: str) -> str:
    upper = value.upper()
    if not _METHOD.match(upper):
        raise ValueError(f"{value!r} is not an HTTP method")
    return upper


def _claim_path(value: str) -> str:
    if not _CLAIM_PATH.match(value):
        raise ValueError(f"{value!r} is not a claim path (names separated by dots)")
    return value


def _route_name(value: str) -> str:
    if not _ROUTE_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a route name: 1 to 128 letters, digits, '_', '.', ':' or '-',"
            " starting with a letter or digit"
        )
    return value


def _listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"{value!r} is not HOST:PORT (for IPv6: [::1]:8080)")
    return value


def _one_or_many(value: Any) -> Any:
    """Accept a lone string where a list of strings is expected."""
    if isinstance(value, str):
        return [value]
    if value is None or isinstance(value, bool | int | float | dict):
        raise ValueError("must be a string or a list of strings")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
IdentityHeaderName = Annotated[str, AfterValidator(_identity_header_name)]
Method = Annotated[str, AfterValidator(_method)]
ClaimPath = Annotated[str, AfterValidator(_claim_path)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]
StringList = Annotated[
    tuple[str, ...],
    BeforeValidator(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "a string, or a list of strings",
        }
    ),
]
NonEmptyString = Annotated[str, Field(min_length=1)]

RouteName = Annotated[
    str,
    AfterValidator(_route_name),
    WithJsonSchema({"type": "string", "pattern": _ROUTE_NAME.pattern}),
]


def _never_none_or_hmac(value: Any) -> Any:
    if isinstance(value, str) and value.lower() == "none":
        raise ValueError('"none" is never accepted: unsigned tokens prove nothing (RFC 8725 §3.1)')
    if isinstance(value, str) and value.upper().startswith("HS"):
        raise ValueError(
            f"{value!r} is never accepted: HMAC with keys from a JWKS lets anyone forge tokens"
            " (RFC 8725 §3.1); use RS*, PS*, ES* or EdDSA"
        )
    return value


# RFC 8725 §3.1: never accept `none`, and never HMAC algorithms with keys from a JWKS (a public key
# used as an HMAC secret is the classic RS/HS confusion attack), so neither can be configured.
Algorithm = Annotated[
    Literal[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
    ],
    BeforeValidator(_never_none_or_hmac),
]
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


class Model(BaseModel):
    """Base for every block of the file: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Admin(Model):
    listen: ListenAddress = "127.0.0.1:9901"


PositiveDuration = Annotated[Duration, Field(gt=0)]


class Limits(Model):
    """Per-request sizes, and the connection-level bounds that keep slow or oversized clients
    from holding the gateway's connections and memory (slowloris, slow bodies, idle sockets)."""

    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    max_token_bytes: PositiveInt = 8192
    header_timeout: PositiveDuration = Field(
        default=10.0,
        description="a request's line and headers must all arrive within this time of their"
        " first byte; otherwise 408 and the connection is closed (slowloris)",
    )
    body_timeout: PositiveDuration = Field(
        default=60.0,
        description="the longest pause between two pieces of a request body while the gateway"
        " is ready to read; then the connection is closed",
    )
    idle_timeout: PositiveDuration = Field(
        default=60.0,
        description="a connection with no request in progress (kept alive, or just opened) is"
        " closed after this long",
    )
    max_headers: PositiveInt = Field(
        default=100, description="more request header lines than this: 400"
    )
    max_header_bytes: PositiveInt = Field(
        default=65536,
        description="a request line and headers larger than this, together: 431 (never less"
        " than max_token_bytes + 2048, so that a token of the maximum size fits)",
    )


class RouteLimits(Model):
    max_body_bytes: PositiveInt


class JwksSettings(Model):
    refresh_interval: Duration = 15 * 60.0
    min_refetch_interval: Duration = 30.0
    max_stale: Duration = 24 * 3600.0


class Introspection(Model):
    endpoint: NonEmptyString | None = None
    client_id: NonEmptyString
    client_secret: str = Field(default="", json_schema_extra={"writeOnly": True})
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    timeout: Duration = 2.0
    cache_ttl: Duration = 300.0
    negative_cache_ttl: Duration = 10.0
    cache_size: PositiveInt = 100_000


class Issuer(Model):
    issuer: NonEmptyString
    discovery: bool = False
    jwks_uri: NonEmptyString | None = None
    jwks_file: NonEmptyString | None = None
    allow_http: bool = False
    algorithms: tuple[Algorithm, ...] = Field(default=DEFAULT_ALGORITHMS, min_length=1)
    audiences: StringList = ()
    leeway: Duration = 30.0
    token_type: NonEmptyString | None = None
    scope_claim: NonEmptyString = "scope"
    jwks: JwksSettings = JwksSettings()
    introspection: Introspection | None = None
    validation: Literal["auto", "introspect"] = "auto"
    dpop: Literal["disabled", "optional", "required"] = "disabled"

    @model_validator(mode="after")
    def _one_key_source(self) -> Issuer:
        if self.jwks_uri and self.jwks_file:
            raise ValueError("give either jwks_uri or jwks_file, not both")
        if not (self.jwks_uri or self.jwks_file or self.discovery or self.introspection):
            raise ValueError(
                "no way to check tokens: give jwks_uri, jwks_file, discovery: true or introspection"
            )
        return self


class Upstream(Model):
    url: NonEmptyString
    connect_timeout: Duration = 2.0
    timeout: Duration = 30.0
    max_connections: PositiveInt = 256
    preserve_host: bool = False


DEFAULT_IDENTITY_HEADERS: dict[str, str] = {
    "X-Auth-Subject": "sub",
    "X-Auth-Client-Id": "client_id",
    "X-Auth-Scopes": "scope",
    "X-Auth-Issuer": "iss",
}


class Identity(Model):
    headers: dict[IdentityHeaderName, ClaimPath] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTITY_HEADERS)
    )
    strip_prefixes: tuple[HeaderName, ...] = ("X-Auth-",)
    forward_authorization: bool = True


class RouteIdentity(Model):
    headers: dict[IdentityHeaderName, ClaimPath]


class Match(Model):
    hosts: StringList = ()
    path: NonEmptyString
    methods: tuple[Method, ...] | None = Field(default=None, min_length=1)


Scalar = str | int | float | bool


class Contains(Model):
    contains: Scalar


class Auth(Model):
    issuers: StringList | None = Field(default=None, min_length=1)
    audience: StringList | None = None
    scopes: StringList = ()
    any_scopes: StringList = ()
    claims: dict[ClaimPath, Scalar | Contains] = Field(default_factory=dict)
    dpop: Literal["disabled", "optional", "required"] | None = None


class Cors(Model):
    allow_origins: StringList = Field(min_length=1)
    allow_methods: tuple[Method, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[HeaderName, ...] = ("Authorization", "Content-Type")
    allow_credentials: bool = False
    max_age: Duration = 600.0


class Route(Model):
    name: RouteName
    match: Match
    upstream: NonEmptyString
    strip_prefix: NonEmptyString | None = None
    auth: Literal["public"] | Auth | None = None
    limits: RouteLimits | None = None
    identity: RouteIdentity | None = None
    cors: Cors | None = None


class RedisCache(Model):
    url: NonEmptyString
    key_prefix: str = "gw:"
    timeout: Duration = 0.05


class Cache(Model):
    redis: RedisCache | None = None


class ProtectedResource(Model):
    resource: NonEmptyString
    authorization_servers: StringList = ()
    scopes_supported: Literal["auto"] | tuple[str, ...] = "auto"
    documentation: NonEmptyString | None = None


class Decide(Model):
    listen: ListenAddress


def _network(value: Any) -> Any:
    try:
        return ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from error


Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(_network),
    WithJsonSchema({"type": "string", "description": "an IP address or CIDR network"}),
]


class Config(Model):
    """The whole file."""

    listen: ListenAddress = "0.0.0.0:8080"
    admin: Admin = Admin()
    workers: PositiveInt | Literal["auto"] = 1
    shutdown_timeout: Duration = 30.0
    limits: Limits = Limits()
    trusted_proxies: tuple[Network, ...] = ()
    issuers: dict[NonEmptyString, Issuer] = Field(default_factory=dict)
    upstreams: dict[NonEmptyString, Upstream] = Field(default_factory=dict)
    identity: Identity = Identity()
    routes: list[Route] = Field(min_length=1)
    cache: Cache | None = None
    protected_resources: tuple[ProtectedResource, ...] = ()
    decide: Decide | None = None


def json_schema() -> dict[str, Any]:
    """The JSON Schema that ``gateway schema`` prints, generated from the models above."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gateway configuration"
    return schema
