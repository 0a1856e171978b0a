"""Bearer tokens of the live page's users: validated with PyJWT against the issuer's published keys.

    validator = TokenValidator(audiences=("api://relaybus",), issuers=(ENTRA_V2,), jwks=JwksCache(url))
    identity = await validator.validate(token)          # or AuthError(reason)
    identity.tenant, identity.user, identity.user_id     # "tid", "oid", "tid:oid"

What a token must be (anything else is an `AuthError` whose `reason` says which rule failed):

- at most 16 KB, three base64url parts, a header naming an asymmetric algorithm of `algorithms` (RS256 by
  default: never `none`, never HS256, so a public key can never be used as an HMAC secret) and a `kid`;
- signed by the key with that `kid` in the issuer's JWKS (`JwksCache`: fetched on first use, kept
  `max_age`, fetched again when a token names a key it does not know — at most once per `refresh_interval`,
  so tokens with made-up key ids cannot make it hammer the issuer);
- `exp` in the future and `nbf` (when present) in the past, each with `leeway` seconds of clock skew;
- `aud` one of `audiences`; `iss` one of `issuers`, where `{tid}` stands for the token's own tenant
  (Entra ID issues per tenant: `https://login.microsoftonline.com/{tid}/v2.0`);
- a `tid` (the tenant) on `tenants` when an allowlist is set, and a subject (`oid`, else `sub`).

reasons:   no_token, malformed_token, bad_algorithm, no_key_id, unknown_key, bad_signature, expired,
           not_yet_valid, wrong_audience, wrong_issuer, missing_claim, no_tenant, tenant_not_allowed,
           no_subject, invalid_token (status 401); keys_unavailable (503: the issuer's JWKS cannot be read)

This module imports PyJWT (and with it `cryptography`) at import: `functions.live` imports it only when a
negotiate request arrives, so that importing the function app does not pay for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from shared.errors import RelaybusError
from shared.redact import redact_url

log = logging.getLogger(__name__)

ENTRA_V2_ISSUER = "https://login.microsoftonline.com/{tid}/v2.0"
ENTRA_V1_ISSUER = "https://sts.windows.net/{tid}/"
ENTRA_JWKS_URL = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
MAX_TOKEN_BYTES = 16 * 1024
MAX_JWKS_BYTES = 512 * 1024
MAX_KEYS = 100
DEFAULT_LEEWAY = 60.0
"""Seconds of clock skew allowed on `exp` and `nbf`."""
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


class AuthError(RelaybusError):
    """A token that does not pass; `reason` is the short code the negotiate answer carries."""

    def __init__(self, reason: str, detail: str = "", status: int = 401) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a validated token is: the tenant (`tid`), the user (`oid`, else `sub`) and a display name."""

    tenant: str
    user: str
    name: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def user_id(self) -> str:
        """The SignalR user id: `<tenant>:<user>`, so that a user id of one tenant never names another's user."""
        return f"{self.tenant}:{self.user}"


Fetch = Callable[[str], Any]
"""`async def fetch(url) -> dict` (the JWKS document); the default reads it with httpx."""


async def fetch_json(url: str, *, timeout: float = 5.0, limit: int = MAX_JWKS_BYTES) -> Any:  # noqa: ASYNC109
    """GET `url` as JSON (no redirects, at most `limit` bytes); `AuthError("keys_unavailable")` otherwise."""
    import httpx

    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise AuthError("keys_unavailable", f"{redact_url(url)} answered {response.status_code}", 503)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise AuthError("keys_unavailable", f"{redact_url(url)} sent more than {limit} bytes", 503)
    except httpx.HTTPError as exc:
        raise AuthError("keys_unavailable", f"{redact_url(url)}: {type(exc).__name__}", 503) from None
    import json

    try:
        return json.loads(bytes(body))
    except ValueError:
        raise AuthError("keys_unavailable", f"{redact_url(url)} did not send JSON", 503) from None


class JwksCache:
    """The issuer's signing keys by `kid` (see the module docstring for when they are fetched)."""

    def __init__(
        self,
        url: str,
        *,
        fetch: Fetch | None = None,
        max_age: float = 24 * 3600.0,
        refresh_interval: float = 60.0,
        failure_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._fetch = fetch or fetch_json
        self.max_age = max_age
        self.refresh_interval = refresh_interval
        self.failure_interval = failure_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        """When the keys in hand were fetched (None: never)."""
        self._attempted_at: float | None = None
        self._failed = False
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self.fetches = 0
        """JWKS requests made (tests and the bound on refreshes)."""

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    def _may_fetch(self, *, unknown_kid: bool) -> bool:
        now = self._clock()
        if self._attempted_at is None:
            return True
        since = now - self._attempted_at
        if self._failed:
            return since >= self.failure_interval
        if self._fetched_at is not None and now - self._fetched_at >= self.max_age:
            return True
        return unknown_kid and since >= self.refresh_interval

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named `kid`; `AuthError("unknown_key")` or `AuthError("keys_unavailable", status=503)`."""
        found = self._keys.get(kid)
        if found is not None and not self._may_fetch(unknown_kid=False):
            return found
        async with self._lock():
            found = self._keys.get(kid)
            if self._may_fetch(unknown_kid=found is None):
                try:
                    await self._refresh()
                except AuthError:
                    if not self._keys:
                        raise
                    log.warning("keeping the %d signing keys in hand: the JWKS could not be read", len(self._keys))
                found = self._keys.get(kid)
        if found is None:
            raise AuthError("unknown_key", f"no signing key {kid[:64]!r} in the issuer's keys")
        return found

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            document = await self._fetch(self.url)
            keys = _parse_jwks(document)
        except AuthError:
            self._failed = True
            raise
        except Exception as exc:
            self._failed = True
            raise AuthError("keys_unavailable", f"{type(exc).__name__} reading the JWKS", 503) from None
        self._failed = False
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("signing keys read url=%s keys=%d", redact_url(self.url), len(keys))


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise AuthError("keys_unavailable", "the JWKS has no keys list", 503)
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # encryption keys, and symmetric keys (never a verification key for a public issuer)
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            log.debug("skipping an unusable JWKS entry kid=%s", entry["kid"][:64])
    if not keys:
        raise AuthError("keys_unavailable", "the JWKS has no usable signing key", 503)
    return keys


_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.exceptions.InvalidSubjectError, "no_subject"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.DecodeError, "malformed_token"),
)


class TokenValidator:
    """Validates bearer tokens (see the module docstring); one per process, shared by every request."""

    def __init__(
        self,
        *,
        audiences: Iterable[str],
        issuers: Iterable[str],
        jwks: JwksCache,
        tenants: Iterable[str] | None = None,
        algorithms: Iterable[str] = ("RS256",),
        leeway: float = DEFAULT_LEEWAY,
    ) -> None:
        self.audiences = tuple(audiences)
        self.issuers = tuple(issuers)
        if not self.audiences or not self.issuers:
            raise ValueError("a validator needs at least one audience and one issuer")
        self.jwks = jwks
        self.tenants = frozenset(tenants) if tenants is not None else None
        self.algorithms = tuple(algorithms)
        if not set(self.algorithms) <= ASYMMETRIC:
            raise ValueError(f"only asymmetric algorithms ({', '.join(sorted(ASYMMETRIC))})")
        self.leeway = leeway

    async def validate(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("no_token", "send Authorization: Bearer <token>")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("malformed_token", f"longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError("malformed_token", _short(exc)) from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise AuthError("bad_algorithm", f"alg {str(algorithm)[:20]!r} (allowed: {', '.join(self.algorithms)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("no_key_id", "the token's header names no kid")
        key = await self.jwks.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[str(algorithm)],
                audience=list(self.audiences),
                leeway=self.leeway,
                options={"require": ["exp", "aud", "iss"], "verify_iss": False},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(_reason(exc), _short(exc)) from None
        tenant = claims.get("tid")
        if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
            raise AuthError("no_tenant", "the token carries no tid (tenant id)")
        issuer = claims.get("iss")
        if issuer not in {template.replace("{tid}", tenant) for template in self.issuers}:
            raise AuthError("wrong_issuer", f"issuer {str(issuer)[:120]!r} is not an accepted issuer for its tenant")
        if self.tenants is not None and tenant not in self.tenants:
            raise AuthError("tenant_not_allowed", f"tenant {tenant[:64]} is not on RELAYBUS_LIVE_TENANTS")
        user = claims.get("oid") or claims.get("sub")
        if not isinstance(user, str) or not user or len(user) > 128:
            raise AuthError("no_subject", "the token carries no oid or sub")
        name = next((claims[c] for c in ("name", "preferred_username", "upn") if isinstance(claims.get(c), str)), "")
        return Identity(tenant=tenant, user=user, name=str(name)[:120], claims=claims)


def _reason(exc: Exception) -> str:
    for kind, reason in _PYJWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid_token"


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None without one)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


__all__ = [
    "ENTRA_JWKS_URL",
    "ENTRA_V1_ISSUER",
    "ENTRA_V2_ISSUER",
    "AuthError",
    "Identity",
    "JwksCache",
    "TokenValidator",
    "bearer",
    "fetch_json",
]
