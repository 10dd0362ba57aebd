"""Loading the YAML file: values, ${VAR} substitution, and errors that name the key and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.load import LoadedConfig, SourceMap, load_config, load_config_text
from gateway.config.problems import ConfigError

# SPEC §3's example as written, except that it gives both `jwks_uri` and `jwks_file` ("or:"), and
# the schema accepts one key source per issuer, so `jwks_file` is commented out; three long
# comments are rewrapped to fit the line length.
SPEC_EXAMPLE = """\
listen: 0.0.0.0:8080                 # public listener
admin:
  listen: 127.0.0.1:9901             # /healthz /readyz /metrics; never on the public port
workers: 1                           # integer or "auto" (one per CPU), SO_REUSEPORT
shutdown_timeout: 30s
limits:
  max_body_bytes: 10485760           # per request; 413 beyond it (routes may override)
  max_token_bytes: 8192              # 401 invalid_token beyond it, before any parsing
trusted_proxies: [10.0.0.0/8]        # default empty. Only from these peers are X-Forwarded-*
                                     # headers kept (and X-Forwarded-For appended to); from any
                                     # other peer they
                                     # are replaced. Client headers never influence route matching.

issuers:
  corp:                              # name used by routes
    issuer: https://idp.example.com  # exact expected `iss`
    discovery: true                  # fetch {issuer}/.well-known/openid-configuration (fallback:
                                     # oauth-authorization-server) for jwks_uri and
                                     # introspection_endpoint unless given below
    jwks_uri: https://idp.example.com/jwks          # or:
    # jwks_file: config/keys/corp.jwks.json  (the schema takes one of jwks_uri and jwks_file)
    allow_http: false                # plain-http jwks/introspection/discovery URLs are a config
                                     # error unless the host is loopback or this is true
    algorithms: [RS256, ES256]       # allow-list; default RS256 RS384 RS512 PS256 PS384 PS512
                                     # ES256 ES384 ES512 EdDSA. `none` and HS* are never accepted
                                     # from a JWKS.
    audiences: [https://api.example.test]           # default audience for routes of this issuer
    leeway: 30s                      # clock skew for exp/nbf/iat
    token_type: at+jwt               # optional: require this JOSE `typ` (RFC 9068)
    scope_claim: scope               # space-separated string; arrays in `scp`/`scope` also accepted
    jwks:
      refresh_interval: 15m          # background refresh
      min_refetch_interval: 30s      # unknown `kid` triggers at most one fetch per interval
      max_stale: 24h                 # keep serving last good keys this long when the IdP is down
    introspection:                   # RFC 7662, for opaque tokens (or all tokens, see `validation`)
      endpoint: https://idp.example.com/introspect   # or discovered
      client_id: gateway
      client_secret: ${INTROSPECTION_SECRET}
      auth_method: client_secret_basic               # or client_secret_post
      timeout: 2s
      cache_ttl: 5m                  # upper bound; an entry never outlives the token's `exp`
      negative_cache_ttl: 10s
      cache_size: 100000
    validation: auto                 # auto: JWT locally, opaque via introspection;
                                     # introspect: always introspect (revocation-sensitive APIs)

upstreams:
  orders:
    url: http://orders.internal:8000
    connect_timeout: 2s
    timeout: 30s                     # whole response, first byte to last
    max_connections: 256
    preserve_host: false             # true: send the client's Host header upstream

identity:                            # defaults; a route may override `headers`
  headers:                           # header: claim path (dots walk into objects)
    X-Auth-Subject: sub
    X-Auth-Client-Id: client_id      # falls back to `azp` when absent
    X-Auth-Scopes: scope             # space-separated
    X-Auth-Issuer: iss
  strip_prefixes: [X-Auth-]          # every incoming header with these prefixes is removed, plus
                                     # every header named in `headers`, on every route (public ones
                                     # too), compared case-insensitively with `_` equal to `-`
                                     # (CGI/WSGI backends read X_Auth_Subject as X-Auth-Subject)
  forward_authorization: true        # false: remove Authorization before forwarding

routes:
  - name: orders-read                # unique; used as the metrics label
    match:
      hosts: [api.example.test]      # optional; exact or *.suffix
      path: /orders/**               # /exact, /a/* (one segment), /a/** (any rest), /a/{id}
      methods: [GET, HEAD]           # optional; default all. OPTIONS preflight: see `cors`
    upstream: orders                 # a name from `upstreams`, or a URL
    strip_prefix: /orders            # optional path rewrite before forwarding
    auth:                            # omitted: any valid token from any issuer
      issuers: [corp]                # optional restriction
      audience: [https://api.example.test/orders]   # token `aud` must contain one of these
      scopes: [orders:read]          # all required
      any_scopes: [orders:admin, orders:support]    # at least one required
      claims:                        # optional conditions, all must hold
        tenant: acme                 # equals
        groups: {contains: support}  # list membership
  - name: health
    match: {path: /status}
    upstream: orders
    auth: public                     # no token needed; a token, if sent, is ignored
"""

MINIMAL = """\
upstreams:
  orders:
    url: http://orders.internal:8000
routes:
  - name: orders
    match: {path: /orders/**}
    upstream: orders
"""


def load(text: str, **environ: str) -> LoadedConfig:
    return load_config_text(textwrap.dedent(text), environ=environ)


def errors(text: str, **environ: str) -> list[str]:
    """The rendered problems (``line N: error: key.path: message``) for a config that must fail."""
    with pytest.raises(ConfigError) as caught:
        load(text, **environ)
    return [problem.describe(None) for problem in caught.value.problems]


def test_the_full_example_from_the_spec_loads() -> None:
    loaded = load(SPEC_EXAMPLE, INTROSPECTION_SECRET="s3cr3t")
    config = loaded.config
    corp = config.issuers["corp"]
    assert config.listen == "0.0.0.0:8080"
    assert config.admin.listen == "127.0.0.1:9901"
    assert config.limits.max_body_bytes == 10485760
    assert [str(network) for network in config.trusted_proxies] == ["10.0.0.0/8"]
    assert corp.algorithms == ("RS256", "ES256")
    assert corp.jwks.refresh_interval == 900.0
    assert corp.jwks.max_stale == 86400.0
    assert corp.introspection is not None
    assert corp.introspection.client_secret == "s3cr3t"
    assert config.upstreams["orders"].timeout == 30.0
    assert config.identity.headers["X-Auth-Client-Id"] == "client_id"
    assert [route.name for route in config.routes] == ["orders-read", "health"]
    assert config.routes[1].auth == "public"
    assert loaded.source_map.line_of(("routes", 1, "auth")) == 86


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("15m", 900.0),
        ("24h", 86400.0),
        ("5", 5.0),
        ("1.5", 1.5),
        ('"5"', 5.0),
        ('"1.5"', 1.5),
    ],
)
def test_durations_are_read_as_seconds(written: str, seconds: float) -> None:
    config = load(f"shutdown_timeout: {written}\n" + MINIMAL).config
    assert config.shutdown_timeout == seconds


def test_variables_are_substituted_inside_larger_strings() -> None:
    config = load(
        MINIMAL.replace("http://orders.internal:8000", "http://${HOST}:${PORT:-8000}/v1"),
        HOST="orders.internal",
    ).config
    assert config.upstreams["orders"].url == "http://orders.internal:8000/v1"


def test_a_set_variable_wins_over_its_default() -> None:
    config = load(
        MINIMAL.replace("http://orders.internal:8000", "http://orders:${PORT:-8000}"), PORT="9000"
    ).config
    assert config.upstreams["orders"].url == "http://orders:9000"


def test_a_doubled_dollar_brace_stays_a_literal_dollar_brace() -> None:
    config = load(
        MINIMAL.replace("path: /orders/**", "path: '/orders/$${id}/**'"), id="never used"
    ).config
    assert config.routes[0].match.path == "/orders/${id}/**"


def test_a_value_that_is_only_a_variable_is_coerced_by_the_schema() -> None:
    text = "workers: ${WORKERS}\nlimits:\n  max_body_bytes: ${LIMIT}\n" + MINIMAL
    config = load(text, WORKERS="4", LIMIT="1024").config
    assert config.workers == 4
    assert config.limits.max_body_bytes == 1024


def test_keys_are_not_substituted() -> None:
    problems = errors("${KEY}: 1\n" + MINIMAL, KEY="listen")
    assert problems == ['line 1: error: ${KEY}: unknown key "${KEY}"']


def test_an_unset_variable_is_reported_with_its_key_path_and_line() -> None:
    problems = errors(SPEC_EXAMPLE)
    assert problems == [
        "line 38: error: issuers.corp.introspection.client_secret:"
        " environment variable INTROSPECTION_SECRET is not set (and has no default)"
    ]


def test_the_error_for_an_unset_variable_never_shows_another_variables_value() -> None:
    text = MINIMAL.replace("http://orders.internal:8000", "http://${HOST}:${PORT}")
    problems = errors(text, HOST="internal-host-name-7")
    assert problems == [
        "line 3: error: upstreams.orders.url: environment variable PORT is not set"
        " (and has no default)"
    ]


SECRET = "sk_live_9f8e7d6c5b4a"


@pytest.mark.parametrize(
    "field",
    [
        "listen: ${SECRET}",
        "workers: ${SECRET}",
        "shutdown_timeout: ${SECRET}",
        "trusted_proxies: [${SECRET}]",
        "admin: {listen: '${SECRET}:x'}",
        "identity: {headers: {X-Auth-Tenant: '${SECRET}..x'}}",
        "limits: {max_body_bytes: '${SECRET}'}",
    ],
)
def test_a_secret_from_the_environment_never_appears_in_an_error(field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(field + "\n" + MINIMAL, SECRET=SECRET)
    assert caught.value.problems, "the bad value must be reported"
    assert SECRET not in str(caught.value)
    assert all(SECRET not in problem.message for problem in caught.value.problems)


def test_a_quoted_substituted_value_is_shown_as_written_in_the_file() -> None:
    problems = errors("listen: ${ADDRESS}\n" + MINIMAL, ADDRESS="nope")
    assert problems == [
        "line 1: error: listen: '${ADDRESS}' (after substitution) is not HOST:PORT"
        " (for IPv6: [::1]:8080)"
    ]


def test_a_duplicate_key_is_reported_at_its_second_occurrence() -> None:
    problems = errors(MINIMAL + "    upstream: billing\n")
    assert problems == [
        'line 8: error: routes[0].upstream: duplicate key "upstream" (first given at line 7)'
    ]


def test_a_nested_list_item_is_reported_on_its_own_line() -> None:
    text = MINIMAL + (
        "  - name: billing\n"
        "    match: {path: /billing/**}\n"
        "    upstream: orders\n"
        "    auth: {scopes: [billing:read]}\n"
        "  - name: reports\n"
        "    match:\n"
        "      path: /reports/**\n"
        "    upstream: orders\n"
        "    auth:\n"
        "      issuers: [corp]\n"
        "      scopes: 5\n"
    )
    assert errors(text) == [
        "line 18: error: routes[2].auth.scopes: must be a string or a list of strings"
    ]


def test_every_error_is_reported_in_file_order() -> None:
    text = "workers: 0\nlisten: nowhere\n" + MINIMAL.replace("/orders/**", "''") + "    port: 1\n"
    assert errors(text) == [
        'line 1: error: workers: must be greater than 0 or "auto"',
        "line 2: error: listen: 'nowhere' is not HOST:PORT (for IPv6: [::1]:8080)",
        "line 8: error: routes[0].match.path: must not be empty",
        'line 10: error: routes[0].port: unknown key "port"',
    ]


def test_a_mapping_given_for_auth_is_judged_only_as_a_mapping() -> None:
    text = MINIMAL + "    auth:\n      scopes: 5\n      scopez: [a]\n"
    assert errors(text) == [
        "line 9: error: routes[0].auth.scopes: must be a string or a list of strings",
        'line 10: error: routes[0].auth.scopez: unknown key "scopez" (did you mean "scopes"?)',
    ]


def test_a_string_given_for_auth_is_judged_against_the_literal() -> None:
    assert errors(MINIMAL + "    auth: none\n") == [
        'line 8: error: routes[0].auth: must be "public" or a mapping'
    ]


def test_an_unknown_key_without_a_close_match_gets_no_hint() -> None:
    assert errors("colour: blue\n" + MINIMAL) == ['line 1: error: colour: unknown key "colour"']


def test_an_alias_repeats_the_anchored_value() -> None:
    text = textwrap.dedent(
        """\
        upstreams:
          orders: {url: http://orders.internal:8000}
        routes:
          - name: orders-read
            match: {path: /orders/**, methods: &read [GET, HEAD]}
            upstream: orders
          - name: billing-read
            match: {path: /billing/**, methods: *read}
            upstream: orders
        """
    )
    assert load(text).config.routes[1].match.methods == ("GET", "HEAD")


def test_merge_keys_fill_in_and_explicit_keys_win() -> None:
    text = textwrap.dedent(
        """\
        upstreams:
          base: &base
            url: http://orders.internal:8000
            timeout: 10s
          orders:
            <<: *base
            timeout: 20s
        routes:
          - name: orders
            match: {path: /orders/**}
            upstream: orders
        """
    )
    loaded = load(text)
    orders = loaded.config.upstreams["orders"]
    assert (orders.url, orders.timeout) == ("http://orders.internal:8000", 20.0)
    assert loaded.source_map.line_of(("upstreams", "orders", "timeout")) == 7
    assert loaded.source_map.line_of(("upstreams", "orders", "url")) == 3


def test_a_tag_outside_the_yaml_standard_is_rejected() -> None:
    assert errors(MINIMAL.replace("path: /orders/**", "path: !!python/name:os.system x")) == [
        "line 6: error: routes[0].match.path: unsupported YAML tag !!python/name:os.system"
    ]


def test_a_yaml_syntax_error_names_its_line() -> None:
    (problem,) = errors(MINIMAL + "  - name: [unclosed\n")
    assert problem.startswith("line 9: error: (top level): invalid YAML: ")


def test_the_source_map_falls_back_to_the_deepest_known_prefix() -> None:
    source_map = SourceMap({(): 1, ("routes",): 4, ("routes", 0): 5})
    assert source_map.line_of(("routes", 0, "auth", "scopes")) == 5
    assert source_map.line_of(("listen",)) == 1
    assert SourceMap().line_of(("listen",)) is None


def test_load_config_reads_a_file_and_gives_its_directory(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text(MINIMAL, encoding="utf-8")
    loaded = load_config(file, environ={})
    assert loaded.path == file
    assert loaded.base_dir == tmp_path
    assert loaded.config.routes[0].name == "orders"


def test_load_config_names_the_file_in_its_errors(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("workers: 0\n" + MINIMAL, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert str(caught.value) == f'{file}:1: error: workers: must be greater than 0 or "auto"'


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml", environ={})
    assert "cannot read the file" in str(caught.value)


def test_the_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_UPSTREAM", "http://from-env:8000")
    text = MINIMAL.replace("http://orders.internal:8000", "${GATEWAY_TEST_UPSTREAM}")
    assert load_config_text(text).config.upstreams["orders"].url == "http://from-env:8000"


@pytest.mark.parametrize(
    "name",
    [
        "Content-Length",
        "Transfer-Encoding",
        "transfer_encoding",
        "Host",
        "Connection",
        "Expect",
        "Authorization",
        "X-Forwarded-For",
        "X-Request-Id",
        "X-HTTP-Method-Override",
        "X-Original-URL",
    ],
)
def test_a_header_that_frames_or_routes_the_request_cannot_carry_a_claim(name: str) -> None:
    # A token's claim there would reframe (request smuggling), re-route or re-address the
    # request the upstream reads.
    problems = errors(f"identity:\n  headers:\n    {name}: sub\n" + MINIMAL)
    assert problems == [
        f"line 3: error: identity.headers.{name}: {name!r} cannot be an identity header: the "
        "gateway sets, removes or frames the request with it, and a token's claim must not"
    ]


def test_an_ordinary_header_carries_a_claim() -> None:
    loaded = load(
        "identity:\n  headers:\n    X-Tenant: tenant\n    Content-Type-Hint: sub\n" + MINIMAL
    )
    assert loaded.config.identity.headers == {"X-Tenant": "tenant", "Content-Type-Hint": "sub"}
