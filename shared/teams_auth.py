"""Teams (Bot Framework) credentials and tokens: one model and one token seam for the worker and the functions.

- `TeamsCredentials`: the credential settings (`TEAMS_APP_ID`, `TEAMS_TENANT_ID`, `TEAMS_APP_PASSWORD`,
  `TEAMS_CERTIFICATE_PATH`, `TEAMS_MANAGED_IDENTITY_CLIENT_ID`, `TEAMS_STATIC_TOKEN`), validated the same
  way on both sides; `check_static_token(credentials, hosts, setting)` is the one guard that keeps the
  sandbox-only static token away from anything but loopback;
- `token_provider(credentials)`: the `TokenProvider` those settings ask for, with a hint naming the
  settings to check when it fails;
- `TokenProvider`: `await provider.token()` returns a bearer token valid for a while; `invalidate()`
  drops a cached token after a 401; `aclose()` releases it.
- `CredentialTokenProvider`: wraps an azure-identity async credential (client secret, certificate or
  managed identity; scope `https://api.botframework.com/.default`), caches the token and refreshes it
  `refresh_margin` seconds before expiry; concurrent callers share one request.
- `StaticTokenProvider`: a fixed token, for the sandbox and tests only (never for a real service).
- `credential_for(app_id, tenant_id, password, certificate_path, managed_identity_client_id)`: picks the
  azure-identity credential from the settings that are present.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from shared.errors import ConfigurationError, RelaybusError
from shared.urls import is_loopback

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"


class TeamsCredentials(BaseModel):
    """How a bot authenticates to the Bot Framework. Precedence: static token (sandbox only), client secret,
    certificate, managed identity (`TEAMS_MANAGED_IDENTITY_CLIENT_ID`, defaulting to the app id)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    settings_name: ClassVar[str] = "TEAMS_APP_ID"

    app_id: str | None = Field(default=None, alias="TEAMS_APP_ID")
    tenant_id: str | None = Field(default=None, alias="TEAMS_TENANT_ID")
    app_password: SecretStr | None = Field(default=None, alias="TEAMS_APP_PASSWORD")
    certificate_path: str | None = Field(default=None, alias="TEAMS_CERTIFICATE_PATH")
    managed_identity_client_id: str | None = Field(default=None, alias="TEAMS_MANAGED_IDENTITY_CLIENT_ID")
    static_token: SecretStr | None = Field(default=None, alias="TEAMS_STATIC_TOKEN")
    """Sandbox only: a fixed bearer token instead of Entra ID (see `check_static_token`)."""

    @model_validator(mode="after")
    def _credential_complete(self) -> TeamsCredentials:
        if self.static_token is None:
            if not self.app_id:
                raise ValueError("TEAMS_APP_ID is required (the bot's app id)")
            if (self.app_password or self.certificate_path) and not self.tenant_id:
                raise ValueError(
                    "TEAMS_TENANT_ID is required with TEAMS_APP_PASSWORD or TEAMS_CERTIFICATE_PATH "
                    "(single-tenant bots authenticate against their tenant)"
                )
        return self


def check_static_token(credentials: TeamsCredentials, hosts: Iterable[str], setting: str) -> None:
    """The one guard for both sides: `TEAMS_STATIC_TOKEN` only when every host it may reach is loopback.

    `hosts` are where the token would be sent (the worker: `TEAMS_BASE_URL`'s host; the functions: the
    Bot Connector allowlist); `setting` names the setting that must point at the sandbox."""
    if credentials.static_token is None:
        return
    targets = [h for h in hosts if h]
    if not targets or not all(is_loopback(host.lstrip(".")) for host in targets):
        raise ValueError(f"TEAMS_STATIC_TOKEN is for the local sandbox only: {setting} must name loopback hosts only")


def token_provider(credentials: TeamsCredentials) -> tuple[TokenProvider, str]:
    """The token provider the credentials ask for, and a hint naming the settings to check."""
    if credentials.static_token is not None:
        return StaticTokenProvider(credentials.static_token.get_secret_value()), "check TEAMS_STATIC_TOKEN"
    assert credentials.app_id is not None  # guaranteed by the model
    credential, hint = credential_for(
        credentials.app_id,
        credentials.tenant_id,
        credentials.app_password.get_secret_value() if credentials.app_password else None,
        credentials.certificate_path,
        credentials.managed_identity_client_id,
    )
    return CredentialTokenProvider(credential, description=hint), hint


class TokenError(RelaybusError):
    """No Bot Framework token could be obtained; `credential` names what to check."""

    def __init__(self, credential: str, detail: str) -> None:
        super().__init__(f"could not get a Bot Framework token ({credential}): {detail}")
        self.credential = credential


class TokenProvider(Protocol):
    async def token(self) -> str: ...

    def invalidate(self) -> None: ...

    async def aclose(self) -> None: ...


class StaticTokenProvider:
    """Always the same token. For the sandbox and tests; `calls` counts requests."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.calls = 0
        self.invalidations = 0

    async def token(self) -> str:
        self.calls += 1
        return self._token

    def invalidate(self) -> None:
        self.invalidations += 1

    async def aclose(self) -> None:
        return None


class CredentialTokenProvider:
    """An azure-identity credential, cached until `refresh_margin` seconds before expiry."""

    def __init__(
        self,
        credential: AsyncTokenCredential,
        scope: str = BOT_FRAMEWORK_SCOPE,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        description: str = "azure-identity credential",
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._margin = refresh_margin
        self._clock = clock
        self._description = description
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._expires_on - self._margin:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._expires_on - self._margin:
                return self._token
            from azure.core.exceptions import ClientAuthenticationError

            try:
                access = await self._credential.get_token(self._scope)
            except ClientAuthenticationError as exc:
                raise TokenError(self._description, exc.message or type(exc).__name__) from exc
            self._token = access.token
            self._expires_on = float(access.expires_on)
            return access.token

    def invalidate(self) -> None:
        self._token = None
        self._expires_on = 0.0

    async def aclose(self) -> None:
        await self._credential.close()


def credential_for(
    app_id: str,
    tenant_id: str | None,
    password: str | None = None,
    certificate_path: str | None = None,
    managed_identity_client_id: str | None = None,
) -> tuple[AsyncTokenCredential, str]:
    """The credential for the settings present, and a description naming the settings to check.

    Client secret (`TEAMS_APP_PASSWORD`) or certificate (`TEAMS_CERTIFICATE_PATH`) need the bot's
    single tenant (`TEAMS_TENANT_ID`); otherwise the user-assigned managed identity
    (`TEAMS_MANAGED_IDENTITY_CLIENT_ID`, defaulting to the app id) is used.
    """
    from azure.identity.aio import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential

    if password or certificate_path:
        if not tenant_id:
            raise ConfigurationError("TEAMS_TENANT_ID", "is required with a client secret or certificate")
        if password:
            return (
                ClientSecretCredential(tenant_id, app_id, password),
                "client secret: check TEAMS_APP_ID, TEAMS_TENANT_ID and TEAMS_APP_PASSWORD",
            )
        return (
            CertificateCredential(tenant_id, app_id, certificate_path=certificate_path),
            "certificate: check TEAMS_APP_ID, TEAMS_TENANT_ID and TEAMS_CERTIFICATE_PATH",
        )
    client_id = managed_identity_client_id or app_id
    return (
        ManagedIdentityCredential(client_id=client_id),
        "managed identity: check TEAMS_MANAGED_IDENTITY_CLIENT_ID and the identity's federation with the bot",
    )
