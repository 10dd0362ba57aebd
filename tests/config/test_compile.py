"""Compilation: the checks that need more than one key of the file (names that must exist, routes
that can never match, URLs that must not be plain http), each reported with its key path and
line, and the compiled objects the request path uses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import CompiledConfig, ConfigError, load_and_compile
from gateway.config.compile import compile_config
from gateway.config.load import load_config_text

KEYS = '{"keys": []}'

ISSUER = """\
issuers:
  corp:
    issuer: https://idp.example.com
    jwks_file: corp.jwks.json
    audiences: [https://api.example.test]
"""


def write(directory: Path, text: str) -> Path:
    (directory / "corp.jwks.json").write_text(KEYS)
    path = directory / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(directory: Path, text: str) -> list[str]:
    """Every error and warning for ``text``, as ``line N: severity: key.path: message``."""
    try:
        compiled, _ = load_and_compile(write(directory, text), environ={})
    except ConfigError as error:
        return [problem.describe() for problem in error.problems]
    return [warning.describe() for warning in compiled.warnings]


def compiled(directory: Path, text: str) -> CompiledConfig:
    result, _ = load_and_compile(write(directory, text), environ={})
    assert result.warnings == []
    return result


def test_an_unknown_upstream_name_is_an_error_at_the_route(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        ISSUER
        + """\
upstreams:
  orders: {url: "http://orders.internal:8000"}
routes:
  - name: orders
    match: {path: /orders}
    upstream: order
""",
    ) == [
        "line 11: error: routes[0].upstream: unknown upstream 'order' (known: orders);"
        " give a name or a URL"
    ]


def test_an_unknown_issuer_in_a_route_is_an_error_at_its_position(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        ISSUER
        + """\
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
    auth:
      issuers:
        - corp
        - crop
""",
    ) == ["line 13: error: routes[0].auth.issuers[1]: unknown issuer 'crop'"]


def test_a_route_name_used_twice_is_an_error_at_the_second(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
    auth: public
  - name: orders
    match: {path: /invoices}
    upstream: http://orders.internal:8000
    auth: public
""",
    ) == ["line 6: error: routes[1].name: route name 'orders' is used twice"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("orders", "path pattern 'orders' must start with '/'"),
        ("/orders/**/items", "path pattern '/orders/**/items': '**' must be the last segment"),
        ("/hosts/{id", "path pattern '/hosts/{id': wildcards must be whole segments"),
        ("/a/../b", "path pattern '/a/../b': segment '..' is a dot segment"),
    ],
)
def test_an_invalid_path_pattern_is_an_error_at_the_path(
    tmp_path: Path, pattern: str, message: str
) -> None:
    assert problems(
        tmp_path,
        f"""\
routes:
  - name: orders
    match:
      path: "{pattern}"
    upstream: http://orders.internal:8000
    auth: public
""",
    ) == [f"line 4: error: routes[0].match.path: {message}"]


def test_an_invalid_host_pattern_is_an_error_at_its_position(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
routes:
  - name: orders
    match:
      hosts:
        - api.example.test
        - "api.*.test"
        - api.example.test:8443
      path: /orders
    upstream: http://orders.internal:8000
    auth: public
""",
    ) == [
        "line 6: error: routes[0].match.hosts[1]: host pattern 'api.*.test':"
        " '*' is only allowed as '*.suffix'",
        "line 7: error: routes[0].match.hosts[2]: host pattern 'api.example.test:8443'"
        " must not have a port or trailing dot",
    ]


def test_an_invalid_host_does_not_hide_an_invalid_path(tmp_path: Path) -> None:
    assert [
        line.split(": ")[:3]
        for line in problems(
            tmp_path,
            """\
routes:
  - name: orders
    match: {hosts: ["*"], path: "orders"}
    upstream: http://orders.internal:8000
    auth: public
""",
        )
    ] == [
        ["line 3", "error", "routes[0].match.hosts[0]"],
        ["line 3", "error", "routes[0].match.path"],
    ]


def test_a_plain_http_jwks_uri_to_another_host_is_an_error(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
issuers:
  corp:
    issuer: https://idp.example.com
    jwks_uri: http://idp.example.com/jwks
    audiences: [https://api.example.test]
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
""",
    ) == [
        "line 4: error: issuers.corp.jwks_uri: plain http is only allowed for loopback hosts"
        " unless allow_http is true"
    ]


def test_allow_http_turns_a_plain_http_jwks_uri_into_a_warning(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
issuers:
  corp:
    issuer: https://idp.example.com
    jwks_uri: http://idp.example.com/jwks
    allow_http: true
    audiences: [https://api.example.test]
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
""",
    ) == ["line 4: warning: issuers.corp.jwks_uri: the issuer is reached over plain http"]


def test_a_plain_http_introspection_endpoint_to_another_host_is_an_error(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
issuers:
  corp:
    issuer: https://idp.example.com
    audiences: [https://api.example.test]
    introspection:
      endpoint: http://idp.example.com/introspect
      client_id: gateway
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
""",
    ) == [
        "line 6: error: issuers.corp.introspection.endpoint: plain http is only allowed for"
        " loopback hosts unless allow_http is true",
    ]


def test_a_plain_http_discovery_to_another_host_is_an_error_at_the_issuer(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
issuers:
  corp:
    issuer: http://idp.example.com
    discovery: true
    audiences: [https://api.example.test]
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
""",
    )[0].startswith("line 3: error: issuers.corp.issuer: plain http is only allowed")


@pytest.mark.parametrize("identifier", ["http://idp.example.com", "urn:example:idp"])
def test_an_issuer_identifier_that_is_never_fetched_may_be_any_string(
    tmp_path: Path, identifier: str
) -> None:
    # Without discovery `issuer` is only compared with the token's `iss` (RFC 7519 §4.1.1).
    result = compiled(
        tmp_path,
        f"""\
issuers:
  corp:
    issuer: "{identifier}"
    jwks_file: corp.jwks.json
    audiences: [https://api.example.test]
routes:
  - name: orders
    match: {{path: /orders}}
    upstream: http://orders.internal:8000
""",
    )
    assert result.issuers["corp"].config.issuer == identifier


def test_a_missing_jwks_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
issuers:
  corp:
    issuer: https://idp.example.com
    jwks_file: keys/missing.jwks.json
    audiences: [https://api.example.test]
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://orders.internal:8000
""",
    )
    assert found == [
        f"line 4: error: issuers.corp.jwks_file: file not found: {tmp_path}/keys/missing.jwks.json"
    ]


def test_a_relative_jwks_file_is_found_next_to_the_config_not_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc" / "gateway"
    (config_dir / "keys").mkdir(parents=True)
    (config_dir / "keys" / "corp.jwks.json").write_text(KEYS)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keys").mkdir(parents=True)  # a decoy the working directory would find
    (elsewhere / "keys" / "corp.jwks.json").write_text(KEYS)
    path = config_dir / "gateway.yaml"
    path.write_text(
        ISSUER.replace("corp.jwks.json", "keys/corp.jwks.json")
        + "routes:\n  - {name: a, match: {path: /a}, upstream: 'http://a.internal'}\n"
    )
    monkeypatch.chdir(elsewhere)
    result, _ = load_and_compile(Path("..") / "etc" / "gateway" / "gateway.yaml")
    jwks_file = result.issuers["corp"].jwks_file
    assert jwks_file is not None
    assert jwks_file.is_absolute()  # a later change of directory cannot break it
    assert jwks_file.resolve() == (config_dir / "keys" / "corp.jwks.json").resolve()


def test_a_route_may_override_the_body_limit(tmp_path: Path) -> None:
    result = compiled(
        tmp_path,
        ISSUER
        + """\
limits: {max_body_bytes: 4096}
routes:
  - name: upload
    match: {path: /upload}
    upstream: http://files.internal
    limits: {max_body_bytes: 1048576}
  - name: other
    match: {path: /other}
    upstream: http://files.internal
""",
    )
    upload, other = (route for _, route in result.routes.entries)
    assert upload.max_body_bytes == 1048576
    assert other.max_body_bytes == 4096


def test_a_route_identity_map_replaces_the_default_and_every_named_header_is_stripped(
    tmp_path: Path,
) -> None:
    result = compiled(
        tmp_path,
        ISSUER
        + """\
identity:
  headers: {X-User: sub}
  strip_prefixes: []
routes:
  - name: tenants
    match: {path: /tenants}
    upstream: http://t.internal
    identity: {headers: {X-Tenant: tenant, X-User-Id: sub}}
  - name: other
    match: {path: /other}
    upstream: http://t.internal
""",
    )
    tenants, other = (route for _, route in result.routes.entries)
    assert tenants.identity_headers == {"X-Tenant": "tenant", "X-User-Id": "sub"}
    assert other.identity_headers == {"X-User": "sub"}
    for name in ("X-User", "x_tenant", "X-USER-ID"):
        assert result.stripper.is_identity_header(name), name
    assert not result.stripper.is_identity_header("X-Trace")


def test_an_upstream_may_be_given_as_a_url_in_the_route(tmp_path: Path) -> None:
    result = compiled(
        tmp_path,
        ISSUER
        + """\
routes:
  - name: a
    match: {path: /a/**}
    upstream: https://backend.internal/api/
    strip_prefix: /a
  - name: b
    match: {path: /b}
    upstream: https://backend.internal/api/
""",
    )
    (_, a), (_, b) = result.routes.entries
    assert a.upstream is b.upstream
    assert (a.upstream.origin, a.upstream.base_path) == ("https://backend.internal:443", "/api")
    assert a.upstream_path("/a/orders/1") == "/api/orders/1"
    assert b.upstream_path("/b") == "/api/b"


def test_an_upstream_url_in_a_route_must_be_http(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """\
routes:
  - name: a
    match: {path: /a}
    upstream: ftp://files.internal/
    auth: public
""",
    ) == ["line 4: error: routes[0].upstream: 'ftp://files.internal/' is not an http(s) URL"]


def test_a_route_covered_by_an_earlier_one_is_an_error(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        ISSUER
        + """\
routes:
  - name: orders
    match: {path: "/orders/*"}
    upstream: http://o.internal
  - name: order-42
    match: {path: /orders/42, methods: [GET]}
    upstream: http://o.internal
""",
    ) == [
        "line 11: error: routes[1].match: route 'order-42' can never match: route 'orders'"
        " (routes[0]) matches everything it does"
    ]


def test_an_empty_audience_list_on_a_route_is_a_warning(tmp_path: Path) -> None:
    # `audience: []` replaces the issuer's audiences and so would accept tokens for any API.
    assert problems(
        tmp_path,
        ISSUER
        + """\
routes:
  - name: orders
    match: {path: /orders}
    upstream: http://o.internal
    auth:
      audience: []
""",
    ) == [
        "line 11: warning: routes[0].auth.audience: protected route without an audience:"
        " tokens meant for any API are accepted"
    ]


def test_compile_config_on_loaded_text_reports_problems_without_lines(tmp_path: Path) -> None:
    loaded = load_config_text(
        "routes:\n  - {name: a, match: {path: /a}, upstream: nowhere, auth: public}\n",
        base_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as caught:
        compile_config(loaded.config, loaded.base_dir)
    [problem] = caught.value.problems
    assert problem.path == ("routes", 0, "upstream")
    assert loaded.source_map.line_of(problem.path) == 2


NOT_YET_BASE = """\
issuers:
  corp:
    issuer: https://idp.example.com
    jwks_uri: https://idp.example.com/jwks
    audiences: [https://api.example.test]
{issuer_extra}
routes:
  - name: orders
    match: {{path: /orders}}
    upstream: http://orders.internal:8000
{route_extra}
{top_extra}
"""


@pytest.mark.parametrize(
    ("issuer_extra", "route_extra", "expected"),
    [
        ("    dpop: required", "", "line 6: error: issuers.corp.dpop: DPoP is not supported"),
        (
            "    validation: introspect",
            "",
            "line 6: error: issuers.corp.validation: introspect needs `introspection`",
        ),
        ("", "    auth: {dpop: required}", "line 11: error: routes[0].auth.dpop: DPoP is not"),
    ],
    ids=["issuer-dpop", "validation-introspect", "route-dpop"],
)
def test_a_setting_that_would_fail_open_if_ignored_or_cannot_work_is_an_error(
    tmp_path: Path, issuer_extra: str, route_extra: str, expected: str
) -> None:
    text = NOT_YET_BASE.format(issuer_extra=issuer_extra, route_extra=route_extra, top_extra="")
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize(
    ("top_extra", "expected"),
    [
        ("decide: {listen: '127.0.0.1:9902'}", "warning: decide: the forward-auth decision"),
        (
            "protected_resources: [{resource: 'https://api.example.test'}]",
            "warning: protected_resources: protected-resource metadata",
        ),
    ],
    ids=["decide", "protected-resources"],
)
def test_a_setting_not_supported_yet_that_cannot_fail_open_is_a_warning(
    tmp_path: Path, top_extra: str, expected: str
) -> None:
    text = NOT_YET_BASE.format(issuer_extra="", route_extra="", top_extra=top_extra)
    found = problems(tmp_path, text)
    assert len(found) == 1 and expected in found[0], found


def test_a_refresh_interval_under_100ms_is_an_error(tmp_path: Path) -> None:
    text = NOT_YET_BASE.format(
        issuer_extra="    jwks: {refresh_interval: 0s}", route_extra="", top_extra=""
    )
    assert problems(tmp_path, text) == [
        "line 6: error: issuers.corp.jwks.refresh_interval: must be at least 100ms"
    ]


def test_a_max_stale_shorter_than_the_refresh_interval_is_a_warning(tmp_path: Path) -> None:
    text = NOT_YET_BASE.format(
        issuer_extra="    jwks: {refresh_interval: 15m, max_stale: 1m}",
        route_extra="",
        top_extra="",
    )
    assert problems(tmp_path, text) == [
        "line 6: warning: issuers.corp.jwks.max_stale: shorter than refresh_interval: keys are"
        " refreshed every max_stale/2 instead"
    ]
