"""The probe's mutable trust state: config, local policy and verifier, kept in step and persisted.

Signed ``policy_update`` and ``key_rotation`` messages change it; each change is written back to the
config file (atomically, 0600) so it survives a restart. A failed write is logged and the change
still applies in memory: refusing a verified policy tightening because a disk is full would be worse.
"""

import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import anyio

from legator_probe.agent.policy import LocalPolicy
from legator_probe.agent.service import PROFILE_ENV
from legator_probe.agent.settings import PolicyConfig, ProbeConfig, SigningKeyConfig, save_config
from legator_probe.agent.status import status_path
from legator_probe.protocol.payloads import KeyRotationPayload, PolicyUpdatePayload
from legator_probe.protocol.signing import (
    DEFAULT_CLOCK_SKEW,
    TrustedKey,
    Verifier,
    decode_public_key,
    encode_public_key,
)

__all__ = ["ProbeState", "protected_paths"]

logger = logging.getLogger(__name__)


def protected_paths(config_path: Path | None) -> list[str]:
    """Globs of the probe's own files (config, status, their temporary and backup siblings)."""
    if config_path is None:
        return []
    config_path = config_path.expanduser().absolute()
    state = status_path(config_path)
    directory = config_path.parent
    return [
        str(config_path),
        f"{config_path}.*",
        f"{directory}/.{config_path.name}.*",
        str(state),
        f"{directory}/.{state.name}.*",
    ]


class ProbeState:
    """Config, policy and verifier of a running probe.

    Attributes:
        config: The current config (as it would be written to disk).
        config_path: Where changes are persisted; ``None`` keeps them in memory only.
        policy: The probe's local policy.
        verifier: Checks signed instructions with the currently trusted keys.
    """

    def __init__(
        self,
        config: ProbeConfig,
        *,
        config_path: Path | None,
        now: Callable[[], datetime],
        default_cwd: str = "/",
    ) -> None:
        """Build the state from a loaded config.

        Args:
            config: The probe config.
            config_path: The file to persist changes to.
            now: Wall clock (timezone-aware) for signature expiry and key retirement.
            default_cwd: Default working directory of commands, for the policy's path resolution.
        """
        self.config = config
        self.config_path = config_path
        self._now = now
        keys = [TrustedKey(key.key_id, decode_public_key(key.public_key), key.not_after) for key in config.signing_keys]
        self.verifier = Verifier(probe_id=config.probe_id, now=now, keys=keys)
        self.policy = LocalPolicy(config.policy, protected_paths=protected_paths(config_path), default_cwd=default_cwd)

    async def apply_policy_update(self, payload: PolicyUpdatePayload) -> bool:
        """Replace the local policy unless the update is older than the current one.

        Returns:
            Whether the update was applied.
        """
        current = self.config.policy
        if payload.version < current.version:
            logger.warning(
                "ignoring policy update %s version %d: older than version %d",
                payload.policy_id,
                payload.version,
                current.version,
            )
            return False
        policy = PolicyConfig(
            policy_id=payload.policy_id,
            level=payload.level,
            path_allow=list(payload.path_allow),
            path_deny=list(payload.path_deny),
            allow_patterns=list(payload.allow_patterns),
            block_patterns=list(payload.block_patterns),
            version=payload.version,
        )
        self.policy = self.policy.with_config(policy)
        changed = policy != current
        self.config = self.config.model_copy(update={"policy": policy})
        logger.info("policy %s version %d applied: level %s", policy.policy_id, policy.version, policy.level)
        if policy.level == "remediate" and os.environ.get(PROFILE_ENV) == "hardened":
            logger.warning(
                "the policy now allows remediation but the systemd unit is hardened (read-only system); "
                "run 'legator-probe service install --profile remediate'"
            )
        if changed:
            await self._persist()
        return True

    async def apply_key_rotation(self, payload: KeyRotationPayload) -> None:
        """Trust the new key, retire the others after the overlap, and persist the key list.

        Raises:
            ValueError: The new public key is invalid (the payload validator normally prevents it).
        """
        self.verifier.apply_key_rotation(payload)
        horizon = self._now() - DEFAULT_CLOCK_SKEW
        keys = [
            SigningKeyConfig(key_id=key.key_id, public_key=encode_public_key(key.public_key), not_after=key.not_after)
            for key in self.verifier.keys
            if key.not_after is None or key.not_after > horizon
        ]
        self.config = self.config.model_copy(update={"signing_keys": keys})
        logger.info("signing key %s trusted; older keys retire in %g s", payload.new_key_id, payload.overlap_s)
        await self._persist()

    async def _persist(self) -> None:
        if self.config_path is None:
            return
        try:
            await anyio.to_thread.run_sync(save_config, self.config_path, self.config)
        except OSError as exc:
            logger.error("cannot persist the probe config to %s: %s", self.config_path, exc.strerror)
