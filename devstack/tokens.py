"""A local token issuer for the live page (dev and tests only): Entra-shaped access tokens for test users.

It stands in for Entra ID, which these machines cannot reach: an RSA key made per process, published as a
JWKS, and tokens shaped like Entra ID v2 access tokens (`iss` per tenant, `aud`, `tid`, `oid`, `sub`, `name`,
`preferred_username`, `iat`/`nbf`/`exp`, `ver` 2.0, RS256 with a `kid`), for users of two or more tenants.
The function app validates them exactly as it validates Entra's (`functions.auth`), pointed here by

    RELAYBUS_LIVE_ISSUERS  = issuer.issuer_template     (http://127.0.0.1:<port>/{tid}/v2.0)
    RELAYBUS_LIVE_JWKS_URL = issuer.jwks_url            (http://127.0.0.1:<port>/discovery/v2.0/keys)
    RELAYBUS_LIVE_AUDIENCE = issuer.audience            (api://relaybus-dev)

Endpoints (it listens on loopback only and answers loopback clients only, 403 otherwise):

- `GET /discovery/v2.0/keys`: the JWKS; `GET /{tid}/v2.0/.well-known/openid-configuration`;
- `POST /token` `{"tenant": …, "user": …}` → `{"access_token", "token_type": "Bearer", "expires_in"}` (the
  mint endpoint: a tenant it does not issue for is 400);
- `GET /sign-in?tenant=…&user=…&redirect=<live page URL>` → a redirect to `<live page>#access_token=…` (the
  redirect must be a loopback http(s) URL: no open redirect), so a browser signs in with one click.

In Python, `issuer.mint(tenant, user, ...)` makes tokens directly, also the wrong ones tests need (expired,
not yet valid, another audience, signed by another key).

    python -m devstack.tokens      # run one and print sign-in URLs (Ctrl-C stops it)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.urls import is_loopback, split

DEFAULT_TENANTS = ("contoso", "fabrikam")
DEFAULT_AUDIENCE = "api://relaybus-dev"
TOKEN_LIFETIME = 3600.0


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class LocalTokenIssuer:
    """See the module docstring."""

    def __init__(
        self,
        *,
        tenants: tuple[str, ...] = DEFAULT_TENANTS,
        audience: str = DEFAULT_AUDIENCE,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the local token issuer is for development only: it listens on loopback, not {host!r}")
        if len(set(tenants)) < 2:
            raise ValueError("the local token issuer issues for two or more tenants")
        self.tenants = tuple(tenants)
        self.audience = audience
        self.host = host
        self.port = port
        self.key = new_key()
        self.kid = secrets.token_hex(8)
        self.other_key = new_key()
        """Signs tokens that claim this issuer's `kid` but are not its own (tests of bad signatures)."""
        self.minted = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def issuer_template(self) -> str:
        return f"{self.base_url}/{{tid}}/v2.0"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/discovery/v2.0/keys"

    def issuer(self, tenant: str) -> str:
        return self.issuer_template.replace("{tid}", tenant)

    def settings(self) -> dict[str, str]:
        """The function app settings that make it accept this issuer's tokens."""
        return {
            "RELAYBUS_LIVE_ISSUERS": self.issuer_template,
            "RELAYBUS_LIVE_JWKS_URL": self.jwks_url,
            "RELAYBUS_LIVE_AUDIENCE": self.audience,
        }

    async def start(self) -> LocalTokenIssuer:
        app = web.Application(middlewares=[_loopback_only])
        app.router.add_get("/discovery/v2.0/keys", self._keys)
        app.router.add_get("/{tid}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_post("/token", self._token)
        app.router.add_get("/sign-in", self._sign_in)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalTokenIssuer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- tokens -------------------------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    @staticmethod
    def object_id(tenant: str, user: str) -> str:
        """A user's `oid`: stable for (tenant, user), like an Entra object id."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"relaybus-dev:{tenant}:{user}"))

    def user_id(self, tenant: str, user: str) -> str:
        """The SignalR user id negotiate gives this user: `<tid>:<oid>`."""
        return f"{tenant}:{self.object_id(tenant, user)}"

    def mint(
        self,
        tenant: str,
        user: str = "alice",
        *,
        audience: str | None = None,
        lifetime: float = TOKEN_LIFETIME,
        not_before: float | None = None,
        issued_at: float | None = None,
        other_key: bool = False,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A token for `user` of `tenant` (any tenant: tests mint for tenants the app does not allow, too);
        `claims` override the token's (None leaves one out)."""
        now = time.time() if issued_at is None else issued_at
        body: dict[str, Any] = {
            "iss": self.issuer(tenant),
            "aud": audience or self.audience,
            "tid": tenant,
            "oid": self.object_id(tenant, user),
            "sub": secrets.token_urlsafe(16),
            "name": user.title(),
            "preferred_username": f"{user}@{tenant}.example",
            "iat": int(now),
            "nbf": int(now if not_before is None else not_before),
            "exp": int(now + lifetime),
            "ver": "2.0",
            **claims,
        }
        body = {name: value for name, value in body.items() if value is not None}  # None: leave the claim out
        self.minted += 1
        key = self.other_key if other_key else self.key
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid or self.kid})

    def sign_in_url(self, redirect: str, tenant: str, user: str = "alice") -> str:
        from urllib.parse import urlencode

        return f"{self.base_url}/sign-in?" + urlencode({"tenant": tenant, "user": user, "redirect": redirect})

    # -- endpoints ----------------------------------------------------------------------------------------------

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks(), headers={"Cache-Control": "max-age=3600"})

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tid"]
        return web.json_response(
            {
                "issuer": self.issuer(tenant),
                "jwks_uri": self.jwks_url,
                "token_endpoint": f"{self.base_url}/token",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    def _user(self, tenant: Any, user: Any) -> tuple[str, str] | str:
        if tenant not in self.tenants:
            return f"this issuer issues for the tenants {', '.join(self.tenants)}"
        if not isinstance(user, str) or not user.isalnum() or len(user) > 40:
            return "user must be a short name of letters and digits"
        return tenant, user

    async def _token(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": "invalid_request", "error_description": "a JSON object"}, status=400)
        found = self._user(body.get("tenant"), body.get("user", "alice"))
        if isinstance(found, str):
            return web.json_response({"error": "invalid_request", "error_description": found}, status=400)
        token = self.mint(*found)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": int(TOKEN_LIFETIME)})

    async def _sign_in(self, request: web.Request) -> web.Response:
        found = self._user(request.query.get("tenant"), request.query.get("user", "alice"))
        if isinstance(found, str):
            return web.Response(status=400, text=found)
        redirect = request.query.get("redirect", "")
        parts = split(redirect)
        if parts is None or parts.scheme not in ("http", "https") or not parts.loopback or parts.has_credentials:
            return web.Response(status=400, text="redirect must be an http(s) URL on loopback (the live page)")
        target = redirect.split("#", 1)[0] + "#access_token=" + self.mint(*found)
        raise web.HTTPFound(target)


@web.middleware
async def _loopback_only(request: web.Request, handler: Any) -> web.StreamResponse:
    peer = request.remote
    if not is_loopback(peer):
        return web.Response(status=403, text="the local token issuer answers loopback clients only")
    response: web.StreamResponse = await handler(request)
    return response


async def _serve() -> None:  # pragma: no cover - a manual tool
    async with LocalTokenIssuer() as issuer:
        print(json.dumps(issuer.settings(), indent=2), flush=True)
        for tenant in issuer.tenants:
            print(f"sign in as alice of {tenant}: {issuer.sign_in_url('http://127.0.0.1:7071/api/live', tenant)}")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())


__all__ = ["DEFAULT_AUDIENCE", "DEFAULT_TENANTS", "LocalTokenIssuer"]
