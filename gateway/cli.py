"""The ``gateway`` command (SPEC §2): run, check, explain, demo, schema.

Exit codes: 0 ok, 1 invalid configuration or a denied decision (explain), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from gateway.config import CompiledConfig, ConfigError, load_and_compile
from gateway.config.problems import Problem
from gateway.config.schema import json_schema

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="An API gateway that enforces OAuth 2.0 bearer tokens."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            default=os.environ.get("GATEWAY_CONFIG"),
            help="the YAML configuration file (default: $GATEWAY_CONFIG)",
        )

    run = commands.add_parser("run", help="serve the gateway")
    with_config(run)
    run.add_argument("--workers", type=_workers, help='worker processes: a number or "auto"')
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="reload when the file changes, checking every SECONDS (default 1)",
    )
    # Set by the supervisor for its workers: not for people.
    run.add_argument("--worker-of", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--public-port", type=int, help=argparse.SUPPRESS)

    check = commands.add_parser("check", help="validate a configuration, print its route table")
    with_config(check)

    explain = commands.add_parser("explain", help="explain how a request would be treated")
    with_config(explain)
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL")
    token = explain.add_mutually_exclusive_group()
    token.add_argument("--token", help="an access token to judge")
    token.add_argument("--token-file", type=Path, help="a file holding the token")
    explain.add_argument("--json", action="store_true", help="print one JSON object")

    demo = commands.add_parser("demo", help="zero-setup showcase on loopback")
    demo.add_argument("--port", type=int, default=8080, help="public port (0: any free port)")
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (0: any)")

    commands.add_parser("schema", help="print the configuration's JSON Schema")
    return parser


def _workers(value: str) -> str:
    """``--workers``: a positive number or ``auto``; anything else is a usage error (exit 2)
    rather than a value silently ignored."""
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f'{value!r} is not a positive number or "auto"')
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code not in (0, None) else EXIT_OK
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    if args.command == "demo":
        from gateway.demo import main as demo_main

        _configure_logs("console", "info")
        return demo_main(args.port, args.admin_port)
    if not args.config:
        parser.print_usage(sys.stderr)
        print("gateway: error: --config (or GATEWAY_CONFIG) is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        compiled, _ = load_and_compile(args.config)
    except ConfigError as error:
        _print_problems(error.problems, args.config, sys.stderr)
        return EXIT_INVALID
    except OSError as error:
        print(f"gateway: cannot read {args.config}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID
    if args.command == "check":
        return _check(compiled, args.config)
    if args.command == "explain":
        return _explain(compiled, args)
    return _run(compiled, args)


def _print_problems(problems: Sequence[Problem], source: str, out: TextIO) -> None:
    for problem in problems:
        print(problem.describe(source), file=out)


def _check(compiled: CompiledConfig, source: str) -> int:
    _print_problems(compiled.warnings, source, sys.stderr)
    print(route_table(compiled))
    print(f"{source}: ok, {len(compiled.routes)} routes")
    return EXIT_OK


def route_table(compiled: CompiledConfig) -> str:
    """The compiled routes in match order, one line each."""
    rows = [("#", "ROUTE", "HOSTS", "PATH", "METHODS", "AUTH", "UPSTREAM")]
    for matcher, route in compiled.routes.entries:
        requirement = route.requirement
        if requirement is None:
            auth = "public"
        else:
            parts = (
                [f"issuers={','.join(sorted(requirement.issuers))}"] if requirement.issuers else []
            )
            if requirement.scopes:
                parts.append(f"scopes={','.join(requirement.scopes)}")
            if requirement.any_scopes:
                parts.append(f"any_scopes={','.join(requirement.any_scopes)}")
            if requirement.claims:
                parts.append(f"claims={','.join(r.path for r in requirement.claims)}")
            auth = "token " + " ".join(parts) if parts else "token"
        rows.append(
            (
                str(route.index),
                route.name,
                ",".join(str(h) for h in matcher.hosts) or "*",
                str(matcher.path),
                ",".join(sorted(matcher.methods)) if matcher.methods else "*",
                auth,
                f"{route.upstream.name} -> {route.upstream.origin}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _explain(compiled: CompiledConfig, args: argparse.Namespace) -> int:
    from gateway.explain import explain

    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as error:
            print(f"gateway: cannot read {args.token_file}: {error.strerror}", file=sys.stderr)
            return EXIT_USAGE
    # stdout carries the answer (with --json, exactly one JSON object): logs go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        _configure_logs("console", "error")
    result = asyncio.run(explain(compiled, args.method, args.url, token))
    print(result.as_json() if args.json else result.as_text())
    return EXIT_OK if result.decision == "allow" else EXIT_INVALID


def _configure_logs(log_format: str, level: str) -> None:
    from gateway.observe.logs import configure_logging

    configure_logging("json" if log_format == "json" else "console", level)


def _run(compiled: CompiledConfig, args: argparse.Namespace) -> int:
    from gateway.observe.logs import get_logger
    from gateway.server import Address, GatewayServer, serve_forever

    _configure_logs(args.log_format, args.log_level)
    log = get_logger("gateway.config")
    if args.worker_of is None:
        log.info(
            "config_loaded",
            config=args.config,
            routes=len(compiled.routes),
            issuers=len(compiled.issuers),
            upstreams=len(compiled.upstreams),
            warnings=len(compiled.warnings),
        )
        for warning in compiled.warnings:
            log.warning("config_warning", problem=warning.describe(args.config))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    workers = _worker_count(args.workers or compiled.config.workers)
    if args.worker_of is None and workers > 1:
        from gateway.workers import Supervisor

        passed_on = ["--log-format", args.log_format, "--log-level", args.log_level]
        supervisor = Supervisor(
            compiled, args.config, workers, worker_args=passed_on, watch=args.watch
        )
        asyncio.run(supervisor.run())
        return EXIT_OK
    if args.worker_of is None:
        server = GatewayServer(compiled, config_path=args.config, settle_heap=True)
    else:
        # A worker: the supervisor serves the admin listener and watches the file.
        listen = Address.parse(compiled.config.listen)
        server = GatewayServer(
            compiled,
            config_path=args.config,
            public=Address(listen.host, args.public_port or listen.port),
            serve_admin=False,
            reuse_port=True,
            ready_file=args.worker_of / f"{os.getpid()}.ready",
            settle_heap=True,
        )
        args.watch = None
    asyncio.run(serve_forever(server, watch=args.watch))
    return EXIT_OK


def _worker_count(value: int | str) -> int:
    if value == "auto":
        from gateway.workers import cpu_count

        return cpu_count()
    return int(value)
