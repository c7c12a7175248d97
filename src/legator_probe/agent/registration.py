"""Registration with the control plane: trade a one-time token for an identity and a credential.

``POST {server}/api/v1/register`` with ``{token, hostname, os, arch, version, tags}`` answers 201
with the probe id, its bearer credential (``lpc_…``), the public key the probe must trust, its
initial policy and the heartbeat interval. :func:`register` turns that into a :class:`ProbeConfig`.
httpx is imported here only, so a running probe never loads it.
"""

import platform
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from legator_probe import __version__
from legator_probe.agent.settings import PolicyConfig, ProbeConfig, SigningKeyConfig
from legator_probe.protocol.sanitize import sanitize
from legator_probe.protocol.types import CapabilityLevel

__all__ = ["RegistrationError", "RegistrationResponse", "register"]

REGISTER_PATH = "/api/v1/register"
"""Where registration is posted, relative to the server URL."""


class RegistrationError(Exception):
    """Raised when registration fails; ``str(exc)`` is one line and ``refused`` marks a bad token."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        """Build the error."""
        super().__init__(message)
        self.refused = refused


class _SigningKey(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key_id: Annotated[str, Field(min_length=1, max_length=128)]
    algorithm: Literal["ed25519"]
    public_key: str


class _Policy(BaseModel):
    model_config = ConfigDict(extra="ignore")

    policy_id: Annotated[str, Field(min_length=1, max_length=128)]
    level: CapabilityLevel
    path_allow: list[str] = []
    path_deny: list[str] = []
    version: Annotated[int, Field(ge=0)] = 0


class RegistrationResponse(BaseModel):
    """The control plane's 201 answer."""

    model_config = ConfigDict(extra="ignore")

    probe_id: Annotated[str, Field(min_length=1, max_length=128)]
    credential: SecretStr
    signing_key: _SigningKey
    policy: _Policy
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0


def _error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
    return sanitize(str(message))[:300]


async def register(
    server_url: str,
    token: str,
    *,
    hostname: str,
    tags: list[str],
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProbeConfig:
    """Register this host and return the config to save.

    Args:
        server_url: Control-plane base URL (``http(s)://host[:port][/prefix]``).
        token: The one-time registration token (never logged).
        hostname: Name to register under.
        tags: Tags to attach to the probe.
        ca_file: CA bundle for an ``https://`` server with a private CA (default: system CAs).
        timeout_s: HTTP timeout.
        transport: Custom httpx transport (tests).

    Raises:
        RegistrationError: The server is unreachable, refused the token (``refused=True``),
            rejected the input, or answered something unexpected.
    """
    body = {
        "token": token,
        "hostname": hostname,
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "version": __version__,
        "tags": tags,
    }
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    url = server_url.rstrip("/") + REGISTER_PATH
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout_s, transport=transport) as client:
            response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach {url}: {sanitize(str(exc)) or type(exc).__name__}") from None
    if response.status_code == 401:
        raise RegistrationError(f"the control plane refused the token: {_error_message(response)}", refused=True)
    if response.status_code == 422:
        raise RegistrationError(f"the control plane rejected the registration: {_error_message(response)}")
    if response.status_code not in (200, 201):
        raise RegistrationError(f"registration failed: {_error_message(response)}")
    try:
        answer = RegistrationResponse.model_validate_json(response.content)
        return ProbeConfig(
            server_url=server_url,
            probe_id=answer.probe_id,
            credential=answer.credential,
            signing_keys=[SigningKeyConfig(key_id=answer.signing_key.key_id, public_key=answer.signing_key.public_key)],
            policy=PolicyConfig(
                policy_id=answer.policy.policy_id,
                level=answer.policy.level,
                path_allow=answer.policy.path_allow,
                path_deny=answer.policy.path_deny,
                version=answer.policy.version,
            ),
            tags=tags,
            ca_file=ca_file,
            heartbeat_interval_s=answer.heartbeat_interval_s,
        )
    except ValidationError as exc:
        where = ".".join(str(part) for part in exc.errors(include_url=False)[0]["loc"])
        raise RegistrationError(f"unexpected registration response from the control plane ({where})") from None
