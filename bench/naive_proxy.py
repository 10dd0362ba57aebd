"""A naive bearer-token proxy: the baseline that `bench/compare.py` measures the gateway against.

    python bench/naive_proxy.py --port 8081 --upstream http://127.0.0.1:8082 \
        --key public.pem --issuer https://issuer.bench --audience https://api.bench --scope read
    python bench/naive_proxy.py --port 8081 --upstream http://127.0.0.1:8082 --no-auth

What a Python developer would write in an afternoon: an aiohttp application with one catch-all
route, PyJWT's ``jwt.decode`` on every request (RS256, issuer, audience, expiry and one scope;
the public key is parsed once at start), and an ``aiohttp.ClientSession`` for the upstream hop,
on uvloop. ``--no-auth`` skips the token check, leaving only the proxying. Not part of the
gateway; benchmarks only.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# Not forwarded in either direction (RFC 9110 §7.6.1), plus what aiohttp sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def build_app(args: argparse.Namespace) -> web.Application:
    key = None if args.no_auth else load_pem_public_key(Path(args.key).read_bytes())
    upstream = args.upstream.rstrip("/")
    app = web.Application()

    async def start_session(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    def denied(status: int, error: str) -> web.Response:
        return web.Response(
            status=status,
            text=error,
            headers={"WWW-Authenticate": f'Bearer error="{error}"'},
        )

    async def handler(request: web.Request) -> web.StreamResponse:
        if key is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return denied(401, "invalid_request")
            try:
                claims = jwt.decode(
                    token,
                    key,  # type: ignore[arg-type]
                    algorithms=["RS256"],
                    audience=args.audience,
                    issuer=args.issuer,
                )
            except jwt.PyJWTError:
                return denied(401, "invalid_token")
            if args.scope and args.scope not in str(claims.get("scope", "")).split():
                return denied(403, "insufficient_scope")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with app["session"].request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, body=payload, headers=out)

    app.on_startup.append(start_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8082")
    parser.add_argument("--key", help="the issuer's RSA public key (PEM)")
    parser.add_argument("--issuer", default="https://issuer.bench")
    parser.add_argument("--audience", default="https://api.bench")
    parser.add_argument("--scope", default="read", help="a scope every token must have")
    parser.add_argument("--no-auth", action="store_true", help="proxy without checking tokens")
    args = parser.parse_args()
    if not args.no_auth and not args.key:
        parser.error("--key is required unless --no-auth")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(build_app(args), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
