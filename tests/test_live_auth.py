"""Bearer token validation for the live page (`functions.auth`), against the local issuer's real JWKS endpoint."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from devstack.tokens import LocalTokenIssuer
from functions.auth import AuthError, JwksCache, TokenValidator, bearer

TENANTS = ("contoso", "fabrikam", "northwind")


@pytest.fixture
async def issuer() -> AsyncIterator[LocalTokenIssuer]:
    async with LocalTokenIssuer(tenants=TENANTS) as running:
        yield running


def validator(issuer: LocalTokenIssuer, **kwargs: Any) -> TokenValidator:
    jwks = kwargs.pop("jwks", None) or JwksCache(issuer.jwks_url)
    return TokenValidator(
        audiences=kwargs.pop("audiences", (issuer.audience,)),
        issuers=kwargs.pop("issuers", (issuer.issuer_template,)),
        jwks=jwks,
        **kwargs,
    )


async def refused(v: TokenValidator, token: str | None) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await v.validate(token)
    return caught.value


async def test_a_good_token_gives_the_tenant_and_the_user(issuer: LocalTokenIssuer) -> None:
    identity = await validator(issuer).validate(issuer.mint("contoso", "alice"))
    assert identity.tenant == "contoso"
    assert identity.user == issuer.object_id("contoso", "alice")
    assert identity.user_id == issuer.user_id("contoso", "alice")
    assert identity.name == "Alice"


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        ({"other_key": True}, "bad_signature"),
        ({"audience": "api://someone-else"}, "wrong_audience"),
        ({"issued_at": time.time() - 7200, "lifetime": 3600}, "expired"),
        ({"not_before": time.time() + 600}, "not_yet_valid"),
        ({"kid": "a-key-nobody-published"}, "unknown_key"),
        ({"iss": "https://login.microsoftonline.com/contoso/v2.0"}, "wrong_issuer"),
        ({"tid": None}, "no_tenant"),
        ({"oid": None, "sub": None}, "no_subject"),
    ],
)
async def test_tokens_that_must_not_pass(issuer: LocalTokenIssuer, mint: dict[str, Any], reason: str) -> None:
    error = await refused(validator(issuer), issuer.mint("contoso", "alice", **mint))
    assert error.reason == reason and error.status == 401


async def test_a_tenant_may_not_claim_another_tenants_issuer(issuer: LocalTokenIssuer) -> None:
    # the issuer is per tenant: a fabrikam token that says it is contoso's does not pass
    token = issuer.mint("fabrikam", "mallory", iss=issuer.issuer("contoso"))
    assert (await refused(validator(issuer), token)).reason == "wrong_issuer"


async def test_small_clock_skew_is_allowed_and_no_more(issuer: LocalTokenIssuer) -> None:
    v = validator(issuer, leeway=60)
    assert await v.validate(issuer.mint("contoso", issued_at=time.time() - 3630, lifetime=3600))  # 30 s past exp
    assert await v.validate(issuer.mint("contoso", not_before=time.time() + 30))
    assert (await refused(v, issuer.mint("contoso", issued_at=time.time() - 3700, lifetime=3600))).reason == "expired"


async def test_the_tenant_allowlist(issuer: LocalTokenIssuer) -> None:
    v = validator(issuer, tenants=("contoso", "fabrikam"))
    assert (await v.validate(issuer.mint("fabrikam"))).tenant == "fabrikam"
    error = await refused(v, issuer.mint("northwind"))
    assert error.reason == "tenant_not_allowed" and "northwind" in error.detail


async def test_no_token_and_garbage(issuer: LocalTokenIssuer) -> None:
    v = validator(issuer)
    assert (await refused(v, None)).reason == "no_token"
    assert (await refused(v, "")).reason == "no_token"
    assert (await refused(v, "not-a-jwt")).reason == "malformed_token"
    assert (await refused(v, "a.b.c")).reason == "malformed_token"
    assert (await refused(v, "x" * 20000)).reason == "malformed_token"
    assert v.jwks.fetches == 0  # nothing that fails before the signature costs a JWKS request


async def test_algorithm_confusion_is_refused(issuer: LocalTokenIssuer) -> None:
    claims = jwt.decode(issuer.mint("contoso"), options={"verify_signature": False})
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    v = validator(issuer)
    # HS256 "signed" with the public key: the classic confusion attack
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": issuer.kid}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac

    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    forged = (header + b"." + body + b"." + signature.rstrip(b"=")).decode()
    assert (await refused(v, forged)).reason == "bad_algorithm"
    unsigned = (base64.urlsafe_b64encode(b'{"alg":"none","kid":"x"}').rstrip(b"=") + b"." + body + b".").decode()
    assert (await refused(v, unsigned)).reason == "bad_algorithm"
    no_kid = jwt.encode(claims, issuer.key, algorithm="RS256")
    assert (await refused(v, no_kid)).reason == "no_key_id"
    with pytest.raises(ValueError, match="asymmetric"):
        validator(issuer, algorithms=("HS256",))


async def test_keys_are_cached_and_unknown_kids_refresh_at_most_once_per_interval(issuer: LocalTokenIssuer) -> None:
    clock = [1000.0]
    cache = JwksCache(issuer.jwks_url, refresh_interval=60, clock=lambda: clock[0])
    v = validator(issuer, jwks=cache)
    for _ in range(5):
        await v.validate(issuer.mint("contoso"))
    assert cache.fetches == 1
    assert (await refused(v, issuer.mint("contoso", kid="made-up"))).reason == "unknown_key"
    assert cache.fetches == 1  # the keys were read less than refresh_interval ago
    clock[0] += 61
    for i in range(20):  # tokens naming keys nobody published: one refresh, then refused without fetching
        assert (await refused(v, issuer.mint("contoso", kid=f"made-up-{i}"))).reason == "unknown_key"
    assert cache.fetches == 2
    clock[0] += 61
    await refused(v, issuer.mint("contoso", kid="made-up-late"))
    assert cache.fetches == 3


async def test_a_rotated_key_is_picked_up_on_its_first_token(issuer: LocalTokenIssuer) -> None:
    clock = [0.0]
    cache = JwksCache(issuer.jwks_url, refresh_interval=60, clock=lambda: clock[0])
    v = validator(issuer, jwks=cache)
    await v.validate(issuer.mint("contoso"))
    clock[0] += 61
    issuer.key, issuer.kid = issuer.other_key, "rotated-key"
    assert (await v.validate(issuer.mint("contoso"))).tenant == "contoso"
    assert cache.fetches == 2


async def test_an_unreachable_jwks_is_503_and_keys_in_hand_keep_working(issuer: LocalTokenIssuer) -> None:
    down = validator(issuer, jwks=JwksCache("http://127.0.0.1:9/keys", failure_interval=5))
    error = await refused(down, issuer.mint("contoso"))
    assert (error.reason, error.status) == ("keys_unavailable", 503)
    clock = [0.0]
    cache = JwksCache(issuer.jwks_url, max_age=100, clock=lambda: clock[0])
    v = validator(issuer, jwks=cache)
    await v.validate(issuer.mint("contoso"))
    await issuer.stop()  # the issuer goes away; its keys expire from the cache but stay in hand
    clock[0] += 200
    assert (await v.validate(issuer.mint("contoso"))).tenant == "contoso"


async def test_a_jwks_that_is_not_one(issuer: LocalTokenIssuer) -> None:
    async def fetch(url: str) -> Any:
        return {"keys": [{"kid": "x", "kty": "oct", "k": "c2VjcmV0"}, "junk", {"kid": 5}]}

    v = validator(issuer, jwks=JwksCache(issuer.jwks_url, fetch=fetch))
    error = await refused(v, issuer.mint("contoso"))
    assert (error.reason, error.status) == ("keys_unavailable", 503)  # a symmetric key is no verification key


def test_bearer_header() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None
    assert bearer(None) is None
