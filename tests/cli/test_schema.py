"""``gateway schema``: the configuration's JSON Schema, generated from the typed models, for
editors and CI linting. Real configurations validate against it; unknown keys do not."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from gateway.config.load import load_config_text
from gateway.config.schema import Config, json_schema
from gateway.demo import CONFIG as DEMO_CONFIG
from tests.cli.conftest import VALID_CONFIG, GatewayCommand
from tests.e2e.conftest import BASIC_CONFIG

# The top-level keys of SPEC §3 (and §9's protected_resources and decide).
SPEC_TOP_LEVEL_KEYS = {
    "listen",
    "admin",
    "workers",
    "shutdown_timeout",
    "limits",
    "trusted_proxies",
    "issuers",
    "upstreams",
    "identity",
    "routes",
    "cache",
    "protected_resources",
    "decide",
}

# SPEC §3's example, with one key source per issuer (the example lists both as alternatives).
SPEC_EXAMPLE = """\
listen: 0.0.0.0:8080
admin:
  listen: 127.0.0.1:9901
workers: 1
shutdown_timeout: 30s
limits:
  max_body_bytes: 10485760
  max_token_bytes: 8192
trusted_proxies: [10.0.0.0/8]
issuers:
  corp:
    issuer: https://idp.example.com
    discovery: true
    jwks_uri: https://idp.example.com/jwks
    allow_http: false
    algorithms: [RS256, ES256]
    audiences: [https://api.example.test]
    leeway: 30s
    token_type: at+jwt
    scope_claim: scope
    jwks:
      refresh_interval: 15m
      min_refetch_interval: 30s
      max_stale: 24h
    introspection:
      endpoint: https://idp.example.com/introspect
      client_id: gateway
      client_secret: ${INTROSPECTION_SECRET:-secret}
      auth_method: client_secret_basic
      timeout: 2s
      cache_ttl: 5m
      negative_cache_ttl: 10s
      cache_size: 100000
    validation: auto
    dpop: optional
upstreams:
  orders:
    url: http://orders.internal:8000
    connect_timeout: 2s
    timeout: 30s
    max_connections: 256
    preserve_host: false
identity:
  headers:
    X-Auth-Subject: sub
    X-Auth-Client-Id: client_id
    X-Auth-Scopes: scope
    X-Auth-Issuer: iss
  strip_prefixes: [X-Auth-]
  forward_authorization: true
routes:
  - name: orders-read
    match:
      hosts: [api.example.test]
      path: /orders/**
      methods: [GET, HEAD]
    upstream: orders
    strip_prefix: /orders
    limits: {max_body_bytes: 1024}
    identity: {headers: {X-Auth-Tenant: tenant}}
    cors: {allow_origins: [https://app.example.test], max_age: 10m}
    auth:
      issuers: [corp]
      audience: [https://api.example.test/orders]
      scopes: [orders:read]
      any_scopes: [orders:admin, orders:support]
      claims:
        tenant: acme
        groups: {contains: support}
  - name: health
    match: {path: /status}
    upstream: orders
    auth: public
cache:
  redis: {url: "redis://127.0.0.1:6379/0", key_prefix: "gw:", timeout: 50ms}
protected_resources:
  - resource: https://api.example.test/orders
    authorization_servers: [corp]
    scopes_supported: auto
    documentation: https://docs.example.test/orders
decide:
  listen: 127.0.0.1:9902
"""


class Invalid(Exception):
    """Where a document breaks the schema."""


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "") -> None:
    """A minimal JSON Schema validator for exactly the keywords ``gateway schema`` uses: enough
    to show that the schema accepts real files and refuses unknown keys, without a new
    dependency. Raises :class:`Invalid` naming the place."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        validate(value, root["$defs"][name], root, at)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, root, at)
                break
            except Invalid as error:
                errors.append(str(error))
        else:
            raise Invalid(f"{at}: no option fits: {errors}")
    if "const" in schema and value != schema["const"]:
        raise Invalid(f"{at}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{at}: not one of {schema['enum']}")
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        raise Invalid(f"{at}: not of type {kind}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise Invalid(f"{at}: too short")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise Invalid(f"{at}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise Invalid(f"{at}: below the minimum")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise Invalid(f"{at}: not above the minimum")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise Invalid(f"{at}: too few items")
        for index, item in enumerate(value):
            validate(item, schema.get("items", {}), root, f"{at}[{index}]")
    if isinstance(value, dict):
        _validate_object(value, schema, root, at)


def _validate_object(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], at: str
) -> None:
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        validate(name, schema.get("propertyNames", {}), root, f"{at}.{name} (the key)")
        if name in properties:
            validate(item, properties[name], root, f"{at}.{name}")
        elif extra is False:
            raise Invalid(f"{at}: unknown key {name!r}")
        elif isinstance(extra, dict):
            validate(item, extra, root, f"{at}.{name}")
    for name in schema.get("required", ()):
        if name not in value:
            raise Invalid(f"{at}: {name} is required")


def _is_type(value: Any, kind: str) -> bool:
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    return bool(checks[kind](value))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json_schema()


def test_schema_prints_the_json_schema_generated_from_the_models(
    gateway_command: GatewayCommand,
) -> None:
    result = gateway_command("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(json_schema()))
    assert json.loads(result.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_schema_has_a_property_for_every_top_level_key_of_the_spec(
    schema: dict[str, Any],
) -> None:
    assert set(schema["properties"]) == SPEC_TOP_LEVEL_KEYS == set(Config.model_fields)
    assert schema["required"] == ["routes"]


def test_unknown_keys_are_refused_at_the_top_level_and_in_routes(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    route = schema["$defs"]["Route"]
    assert route["additionalProperties"] is False
    assert set(route["properties"]) == {
        "name",
        "match",
        "upstream",
        "strip_prefix",
        "auth",
        "limits",
        "identity",
        "cors",
    }


def test_every_block_of_the_file_refuses_unknown_keys(schema: dict[str, Any]) -> None:
    models = {name for name, definition in schema["$defs"].items() if "properties" in definition}
    assert {"Issuer", "Upstream", "Auth", "Match", "Introspection", "JwksSettings"} <= models
    for name in models:
        assert schema["$defs"][name]["additionalProperties"] is False, name


@pytest.mark.parametrize(
    "text",
    [
        SPEC_EXAMPLE,
        VALID_CONFIG.format(
            issuer="https://idp.test", audience="https://api.test", upstream="http://u"
        ),
        BASIC_CONFIG.format(
            issuer="https://idp.test", audience="https://api.test", upstream="http://u"
        ),
        DEMO_CONFIG.format(
            path="gateway.yaml",
            port=8080,
            admin_port=9901,
            issuer="http://127.0.0.1:1",
            audience="https://demo.api.test",
            echo="http://127.0.0.1:1",
        ),
    ],
    ids=["spec-example", "cli-tests", "e2e-tests", "demo"],
)
def test_real_configurations_validate_against_the_schema(text: str, schema: dict[str, Any]) -> None:
    load_config_text(text, environ={})  # the gateway itself accepts it
    validate(yaml.safe_load(text), schema, schema)


@pytest.mark.parametrize(
    ("written", "misspelt", "message"),
    [
        ("workers: 1", "worker: 1", "unknown key 'worker'"),
        ("token_type: at+jwt", "token_typ: at+jwt", "unknown key 'token_typ'"),
        ("  scopes: [orders:read]", "  scope: [orders:read]", "unknown key 'scope'"),
        ("upstream: orders\n", "upstreams: orders\n", "unknown key 'upstreams'"),
    ],
    ids=["top-level", "issuer", "route-auth", "route"],
)
def test_a_misspelt_key_is_refused_by_the_schema(
    written: str, misspelt: str, message: str, schema: dict[str, Any]
) -> None:
    assert written in SPEC_EXAMPLE
    document = yaml.safe_load(SPEC_EXAMPLE.replace(written, misspelt, 1))
    with pytest.raises(Invalid, match=message):
        validate(document, schema, schema)


def test_a_value_of_the_wrong_type_is_refused_by_the_schema(schema: dict[str, Any]) -> None:
    document = yaml.safe_load(SPEC_EXAMPLE.replace("workers: 1", "workers: many"))
    with pytest.raises(Invalid, match=r"\.workers: no option fits"):
        validate(document, schema, schema)


def test_a_lone_string_the_gateway_accepts_for_a_list_is_accepted_by_the_schema(
    schema: dict[str, Any],
) -> None:
    text = SPEC_EXAMPLE.replace("scopes: [orders:read]", "scopes: orders:read")
    load_config_text(text, environ={})
    validate(yaml.safe_load(text), schema, schema)
