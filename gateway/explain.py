"""``gateway explain``: which route a request matches, what it requires, and what a token gets,
with every reason, without forwarding anything."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.config.compile import CompiledConfig, CompiledRoute
from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, Identity
from gateway.pipeline.extract import carries_access_token, extract_bearer
from gateway.pipeline.identity import identity_headers
from gateway.pipeline.ingress import AmbiguousPath, normalize_path
from gateway.pipeline.routing import MethodNotAllowed
from gateway.proxy import Gateway


@dataclass(slots=True)
class Explanation:
    route: str | None
    requires: dict[str, Any]
    decision: str
    reasons: list[str] = field(default_factory=list)
    identity_headers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(
            {
                "route": self.route,
                "requires": self.requires,
                "decision": self.decision,
                "reasons": self.reasons,
                "identity_headers": self.identity_headers,
            },
            indent=2,
        )

    def as_text(self) -> str:
        lines = [f"route:    {self.route or '(none)'}"]
        for note in self.notes:
            lines.append(f"note:     {note}")
        for key, value in self.requires.items():
            shown = ", ".join(map(str, value)) if isinstance(value, list | tuple) else value
            lines.append(f"requires: {key}: {shown}")
        lines.append(f"decision: {self.decision}")
        for reason in self.reasons:
            lines.append(f"reason:   {reason}")
        for name, value in self.identity_headers.items():
            lines.append(f"header:   {name}: {value}")
        return "\n".join(lines)


def requirements_of(route: CompiledRoute, gateway: Gateway) -> dict[str, Any]:
    requirement = route.requirement
    if requirement is None:
        return {"auth": "public", "upstream": route.upstream.name}
    issuers = sorted(requirement.issuers or gateway.compiled.issuers)
    audiences = sorted(
        {a for i in issuers for a in gateway.authorizer.effective_audience(requirement, i)}
    )
    requires: dict[str, Any] = {"auth": "token", "issuers": issuers}
    if audiences:
        requires["audience"] = audiences
    if requirement.scopes:
        requires["scopes"] = list(requirement.scopes)
    if requirement.any_scopes:
        requires["any_scopes"] = list(requirement.any_scopes)
    if requirement.claims:
        requires["claims"] = {
            r.path: ({"contains": r.value} if r.contains else r.value) for r in requirement.claims
        }
    requires["upstream"] = route.upstream.name
    return requires


async def explain(
    compiled: CompiledConfig, method: str, url: str, token: str | None
) -> Explanation:
    """Explain how the gateway would treat ``METHOD URL`` (with ``token``, if given)."""
    gateway = Gateway(compiled, Metrics())
    try:
        return await _explain(gateway, method.upper(), url, token)
    finally:
        await gateway.close()


async def _explain(gateway: Gateway, method: str, url: str, token: str | None) -> Explanation:
    parts = urlsplit(url)
    try:
        path = normalize_path(parts.path or "/")
    except AmbiguousPath as error:
        return Explanation(None, {}, "deny", ["invalid_request"], notes=[f"400: {error}"])
    # The Host header carries no user info: `user@api.example.test` must match as the host.
    host = parts.netloc.rpartition("@")[2] or None
    found = gateway.compiled.routes.lookup(host, path, method)
    if found is None:
        return Explanation(None, {}, "deny", notes=["404: no route matches"])
    if isinstance(found, MethodNotAllowed):
        return Explanation(None, {}, "deny", notes=[f"405: allowed: {', '.join(found.allow)}"])
    route = found.value
    requires = requirements_of(route, gateway)
    if route.requirement is None:
        return Explanation(route.name, requires, "allow", notes=["public route: no token needed"])
    in_query = carries_access_token(parts.query)
    extracted = extract_bearer(
        [f"Bearer {token}"] if token is not None else [],
        query_has_token=in_query,
        max_token_bytes=gateway.max_token_bytes,
    )
    if isinstance(extracted, Denial):
        return Explanation(route.name, requires, "deny", [extracted.reason])
    await gateway.start()
    judged = await _judge(gateway, route, extracted)
    if not isinstance(judged, Identity):
        return Explanation(route.name, requires, "deny", [d.reason for d in judged])
    headers = dict(identity_headers(judged, route.identity_headers))
    return Explanation(route.name, requires, "allow", identity_headers=headers)


async def _judge(gateway: Gateway, route: CompiledRoute, token: str) -> Identity | list[Denial]:
    """The identity, or every reason the token is refused. The token is verified once: a
    second verification (as before) could disagree with the first and crash on an assert."""
    requirement = route.requirement
    assert requirement is not None
    verified = await gateway.verifier.verify(token, requirement.issuers, check_lifetime=False)
    if isinstance(verified, Denial):
        return [verified]
    reasons = []
    if lifetime := gateway.verifier.lifetime_denial(verified):
        reasons.append(lifetime)
    reasons.extend(gateway.authorizer.denials(requirement, verified))
    if reasons:
        return reasons
    identity = gateway.authorizer.authorize(requirement, verified)
    return [identity] if isinstance(identity, Denial) else identity
