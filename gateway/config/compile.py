"""Configuration -> the immutable objects the request path uses.

Compilation checks what the schema alone cannot (names that must exist, routes that can never
match, URLs that must not be plain http) and produces a :class:`CompiledConfig`: a route table, per
route requirements and header rules, per issuer key sources. The request path only looks things
up in it; it never reads the configuration models.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.pipeline.authorize import ClaimRule, Requirement
from gateway.pipeline.cors import CorsPolicy
from gateway.pipeline.identity import HeaderStripper
from gateway.pipeline.ingress import AmbiguousPath, normalize_path
from gateway.pipeline.routing import HostPattern, PathPattern, RouteMatcher, RouteTable
from gateway.pipeline.verify.fetch import plain_http_refused
from gateway.upstream.target import UpstreamTarget

from .problems import ConfigError, KeyPath, Problem
from .schema import Auth, Config, Contains, Cors, Issuer, Limits, Route, Upstream


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    index: int
    upstream: UpstreamTarget
    strip_prefix: str | None
    requirement: Requirement | None  # None: public
    max_body_bytes: int
    identity_headers: Mapping[str, str]
    cors: CorsPolicy | None

    @property
    def public(self) -> bool:
        return self.requirement is None

    def upstream_path(self, path: str) -> str:
        """The path sent upstream: the matched path less ``strip_prefix``, under the base path."""
        if self.strip_prefix and (
            path == self.strip_prefix or path.startswith(self.strip_prefix.rstrip("/") + "/")
        ):
            path = path[len(self.strip_prefix.rstrip("/")) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
        return self.upstream.base_path + path if self.upstream.base_path else path


@dataclass(frozen=True, slots=True)
class IssuerSource:
    """Where an issuer's keys come from, and how it is checked."""

    name: str
    config: Issuer
    jwks_file: Path | None


# Room for the request line and the other headers around a token of exactly `max_token_bytes`:
# aiohttp's default (8190 bytes a header line) would refuse an 8192-byte token outright.
HEAD_ROOM = 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The public listener's bounds on one client connection (``limits``), as the server
    applies them: what a slow, idle or oversized client may hold."""

    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_headers: int
    max_line_bytes: int  # the request line, and each header line
    max_head_bytes: int  # the request line and every header together

    @classmethod
    def of(cls, limits: Limits) -> ConnectionLimits:
        line = max(8190, limits.max_token_bytes + HEAD_ROOM)
        return cls(
            header_timeout=limits.header_timeout,
            body_timeout=limits.body_timeout,
            idle_timeout=limits.idle_timeout,
            max_headers=limits.max_headers,
            max_line_bytes=line,
            # A token of the maximum size must always fit, whatever max_header_bytes says.
            max_head_bytes=max(limits.max_header_bytes, line + HEAD_ROOM),
        )


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    config: Config
    routes: RouteTable[CompiledRoute]
    issuers: Mapping[str, IssuerSource]
    upstreams: Mapping[str, UpstreamTarget]
    stripper: HeaderStripper
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    connection: ConnectionLimits
    warnings: list[Problem] = field(default_factory=list)


class _Compiler:
    def __init__(self, config: Config, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.upstreams: dict[str, UpstreamTarget] = {}
        self.repeated_names = _repeated_names(config.routes)

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(path, message))

    def warn(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(path, message, severity="warning"))

    def run(self) -> CompiledConfig:
        config = self.config
        self.not_yet_supported()
        issuers = {name: self.issuer(name, issuer) for name, issuer in config.issuers.items()}
        for name, upstream in config.upstreams.items():
            target = self.upstream_target(("upstreams", name, "url"), name, upstream)
            if target is not None:
                self.upstreams[name] = target
        entries = []
        for index in range(len(config.routes)):
            matcher, route = self.matcher(index), self.route(index)
            if matcher is not None and route is not None:
                entries.append((matcher, route))
        table = RouteTable(entries)
        self.check_route_table(table)
        names = [*config.identity.headers]
        names += [h for r in config.routes if r.identity for h in r.identity.headers]
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            raise ConfigError(self.problems)
        return CompiledConfig(
            config=config,
            routes=table,
            issuers=issuers,
            upstreams=self.upstreams,
            stripper=HeaderStripper.of(config.identity.strip_prefixes, names),
            trusted_proxies=config.trusted_proxies,
            connection=ConnectionLimits.of(config.limits),
            warnings=[p for p in self.problems if p.severity == "warning"],
        )

    def not_yet_supported(self) -> None:
        """Settings of the contract this version does not implement yet. Those that would make
        the gateway more permissive if ignored (DPoP) are errors, so that no configuration
        fails open; the others are warnings."""
        config = self.config
        later = "is not supported by this version yet"
        for name, issuer in config.issuers.items():
            if issuer.validation == "introspect" and issuer.introspection is None:
                self.error(("issuers", name, "validation"), "introspect needs `introspection`")
            if issuer.dpop != "disabled":
                self.error(("issuers", name, "dpop"), f"DPoP {later}")
        for index, route in enumerate(config.routes):
            auth = route.auth
            if isinstance(auth, Auth) and auth.dpop not in (None, "disabled"):
                self.error(("routes", index, "auth", "dpop"), f"DPoP {later}")
        if config.protected_resources:
            self.warn(("protected_resources",), f"protected-resource metadata {later}")
        if config.decide is not None:
            self.warn(("decide",), f"the forward-auth decision endpoint {later}")

    def issuer(self, name: str, issuer: Issuer) -> IssuerSource:
        path: KeyPath = ("issuers", name)
        jwks = issuer.jwks
        if jwks.refresh_interval < 0.1:
            # A background loop with no pause would flood the identity provider.
            self.error((*path, "jwks", "refresh_interval"), "must be at least 100ms")
        elif jwks.max_stale < jwks.refresh_interval:
            self.warn(
                (*path, "jwks", "max_stale"),
                "shorter than refresh_interval: keys are refreshed every max_stale/2 instead",
            )
        # The `issuer` value is only fetched with discovery; otherwise it is just the expected
        # `iss` string, which RFC 7519 §4.1.1 lets be any StringOrURI (even `urn:...`).
        fetched: list[tuple[KeyPath, str | None]] = [
            ((*path, "issuer"), issuer.issuer if issuer.discovery else None),
            ((*path, "jwks_uri"), issuer.jwks_uri),
        ]
        if issuer.introspection is not None:
            fetched.append(((*path, "introspection", "endpoint"), issuer.introspection.endpoint))
            if not (issuer.introspection.endpoint or issuer.discovery):
                self.error(
                    (*path, "introspection"),
                    "give introspection.endpoint, or discovery: true to find it",
                )
        for key, url in fetched:
            if url is None:
                continue
            if reason := plain_http_refused(url, issuer.allow_http):
                self.error(key, reason)
            elif urlsplit(url).scheme == "http":
                self.warn(key, "the issuer is reached over plain http")
        jwks_file = None
        if issuer.jwks_file is not None:
            jwks_file = Path(issuer.jwks_file)
            if not jwks_file.is_absolute():
                jwks_file = self.base_dir / jwks_file
            if not jwks_file.is_file():
                self.error((*path, "jwks_file"), f"file not found: {jwks_file}")
        return IssuerSource(name=name, config=issuer, jwks_file=jwks_file)

    def upstream_target(
        self, path: KeyPath, name: str, upstream: Upstream
    ) -> UpstreamTarget | None:
        parts = urlsplit(upstream.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.error(path, f"{upstream.url!r} is not an http(s) URL")
            return None
        if parts.query or parts.fragment or parts.username or parts.password:
            self.error(path, "an upstream URL has no query, fragment or credentials")
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            self.error(path, f"{upstream.url!r} has an invalid port")
            return None
        return UpstreamTarget(
            name=name,
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            base_path=parts.path.rstrip("/"),
            connect_timeout=upstream.connect_timeout,
            timeout=upstream.timeout,
            max_connections=upstream.max_connections,
            preserve_host=upstream.preserve_host,
        )

    def matcher(self, index: int) -> RouteMatcher | None:
        # Hosts and path are parsed one by one so that each mistake is reported under its own
        # key (guessing the key from the message put `/hosts/{x` under `hosts`) and none hides
        # another.
        match = self.config.routes[index].match
        path: KeyPath = ("routes", index, "match")
        hosts: list[HostPattern] = []
        for position, host in enumerate(match.hosts):
            try:
                hosts.append(HostPattern.parse(host))
            except ValueError as error:
                self.error((*path, "hosts", position), str(error))
        try:
            pattern = PathPattern.parse(match.path)
        except ValueError as error:
            self.error((*path, "path"), str(error))
            return None
        if len(hosts) != len(match.hosts):
            return None
        methods = None if match.methods is None else frozenset(match.methods)
        try:
            return RouteMatcher(tuple(hosts), pattern, methods)
        except ValueError as error:
            self.error((*path, "methods"), str(error))
            return None

    def route(self, index: int) -> CompiledRoute | None:
        route = self.config.routes[index]
        path: KeyPath = ("routes", index)
        if index in self.repeated_names:
            self.error((*path, "name"), f"route name {route.name!r} is used twice")
        target = self.route_upstream(index)
        strip_prefix = self.strip_prefix(index)
        requirement = None if route.auth == "public" else self.requirement(index, route.auth)
        if target is None:
            return None
        headers = route.identity.headers if route.identity else self.config.identity.headers
        limits = route.limits.max_body_bytes if route.limits else None
        return CompiledRoute(
            name=route.name,
            index=index,
            upstream=target,
            strip_prefix=strip_prefix,
            requirement=requirement,
            max_body_bytes=limits or self.config.limits.max_body_bytes,
            identity_headers=dict(headers),
            cors=_cors(route.cors) if route.cors else None,
        )

    def route_upstream(self, index: int) -> UpstreamTarget | None:
        reference = self.config.routes[index].upstream
        if reference in self.upstreams:
            return self.upstreams[reference]
        if reference in self.config.upstreams:
            return None  # its own error was reported under upstreams
        if "://" in reference:
            target = self.upstream_target(
                ("routes", index, "upstream"), reference, Upstream(url=reference)
            )
            if target is not None:
                self.upstreams.setdefault(reference, target)
            return target
        known = ", ".join(self.config.upstreams) or "none defined"
        self.error(
            ("routes", index, "upstream"),
            f"unknown upstream {reference!r} (known: {known}); give a name or a URL",
        )
        return None

    def strip_prefix(self, index: int) -> str | None:
        prefix = self.config.routes[index].strip_prefix
        if prefix is None:
            return None
        try:
            normalized = normalize_path(prefix)
        except AmbiguousPath as error:
            self.error(("routes", index, "strip_prefix"), str(error))
            return None
        if normalized != prefix:
            self.error(("routes", index, "strip_prefix"), "must be a normalised path like /orders")
        return normalized

    def requirement(self, index: int, auth: Auth | None) -> Requirement:
        auth = auth or Auth()
        path: KeyPath = ("routes", index, "auth")
        if not self.config.issuers:
            self.error(path, "a protected route needs at least one issuer under `issuers`")
        for position, name in enumerate(auth.issuers or ()):
            if name not in self.config.issuers:
                self.error((*path, "issuers", position), f"unknown issuer {name!r}")
        rules = tuple(
            ClaimRule(claim, rule.contains, True)
            if isinstance(rule, Contains)
            else ClaimRule(claim, rule)
            for claim, rule in auth.claims.items()
        )
        issuers = auth.issuers or tuple(self.config.issuers)
        unbounded = "protected route without an audience: tokens meant for any API are accepted"
        if auth.audience is None and not all(
            self.config.issuers[i].audiences for i in issuers if i in self.config.issuers
        ):
            self.warn(("routes", index, "auth"), unbounded)
        elif auth.audience == ():
            # An empty list replaces the issuers' default audiences and checks none at all.
            self.warn(("routes", index, "auth", "audience"), unbounded)
        return Requirement(
            issuers=tuple(auth.issuers) if auth.issuers else None,
            audience=auth.audience,
            scopes=auth.scopes,
            any_scopes=auth.any_scopes,
            claims=rules,
        )

    def check_route_table(self, table: RouteTable[CompiledRoute]) -> None:
        entries = table.entries
        for earlier, later in table.shadowed():
            first, second = entries[earlier][1], entries[later][1]
            self.error(
                ("routes", second.index, "match"),
                f"route {second.name!r} can never match: route {first.name!r} "
                f"(routes[{first.index}]) matches everything it does",
            )
        public = [index for index, (_, route) in enumerate(entries) if route.public]
        protected = [index for index, (_, route) in enumerate(entries) if not route.public]
        for index, other_index in table.overlapping(public, protected):
            route, other = entries[index][1], entries[other_index][1]
            self.warn(
                ("routes", route.index, "match", "path"),
                f"public route {route.name!r} overlaps protected route {other.name!r}",
            )


def _repeated_names(routes: Sequence[Route]) -> set[int]:
    """Indices of the routes whose name an earlier route already has (one pass, not one per
    route: a file of 10,000 routes must not take 50 million comparisons to check)."""
    seen: set[str] = set()
    repeated: set[int] = set()
    for index, route in enumerate(routes):
        if route.name in seen:
            repeated.add(index)
        seen.add(route.name)
    return repeated


def _cors(cors: Cors) -> CorsPolicy:
    return CorsPolicy(
        allow_origins=frozenset(cors.allow_origins),
        allow_methods=cors.allow_methods,
        allow_headers=cors.allow_headers,
        allow_credentials=cors.allow_credentials,
        max_age=int(cors.max_age),
    )


def compile_config(config: Config, base_dir: Path) -> CompiledConfig:
    """Compile a validated configuration; raises :class:`ConfigError` listing every error."""
    return _Compiler(config, base_dir).run()
