"""Secrets at rest (S3 source credentials): Fernet tokens from `cryptography`, keys from
QUARRY_SECRET_KEY.

A sealed value is stored as ``{"fernet": "<token>", "shown": "<masked form>"}`` in place of
the plaintext string: the token is AES-128-CBC + HMAC-SHA256 (Fernet), the masked form is what
API readers see (so listings never need the key). Only the sync, where the connector is built,
opens sealed values (`open_config`).

Rotation: QUARRY_SECRET_KEY holds one or more comma-separated keys (`Fernet.generate_key()`).
The first encrypts, every key decrypts (`MultiFernet`). To retire a key: put the new key
first, keep the old one after it, run `quarry sources rotate-secrets` (re-encrypts every
stored secret with the first key), then drop the old key.

Without a key the platform stores no source credentials at all (the API answers 422): an
operator who wants S3 credentials sets a key, kept apart from the database and its backups.
Plaintext values written by earlier versions are still read, and sealed by the next
rotate-secrets run.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["SecretBox", "SecretError", "is_sealed", "open_config", "secret_box", "shown_value"]

_TOKEN, _SHOWN = "fernet", "shown"


class SecretError(ValueError):
    """A sealed value cannot be opened (no key configured, or none of the keys fits)."""


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(_TOKEN), str)


def shown_value(value: Any) -> Any:
    """What a reader may see of a stored secret (sealed or legacy plaintext)."""
    if is_sealed(value):
        return value.get(_SHOWN, "********")
    if isinstance(value, str) and value:
        return "********"
    return value


class SecretBox:
    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretError("no secret key configured")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])

    def seal(self, plaintext: str, shown: str = "********") -> dict[str, str]:
        return {_TOKEN: self._fernet.encrypt(plaintext.encode()).decode(), _SHOWN: shown}

    def open(self, value: Any) -> Any:
        """The plaintext of a sealed value; anything else is returned as it is."""
        if not is_sealed(value):
            return value
        try:
            return self._fernet.decrypt(value[_TOKEN].encode()).decode()
        except InvalidToken:
            raise SecretError("a stored source secret cannot be decrypted with QUARRY_SECRET_KEY "
                              "(was its key removed?); set the secret again") from None

    def reseal(self, value: dict[str, str]) -> dict[str, str]:
        """The same secret encrypted with the first key (rotation)."""
        try:
            token = self._fernet.rotate(value[_TOKEN].encode()).decode()
        except InvalidToken:
            raise SecretError("a stored source secret cannot be decrypted with QUARRY_SECRET_KEY") from None
        return {**value, _TOKEN: token}


@functools.lru_cache(maxsize=4)
def _box(keys: str) -> SecretBox:
    return SecretBox(keys)


def secret_box(settings: Settings) -> SecretBox | None:
    """The configured box, or None when QUARRY_SECRET_KEY is empty."""
    return _box(settings.secret_key) if settings.secret_key.strip() else None


def open_config(config: dict[str, Any], box: SecretBox | None) -> dict[str, Any]:
    """A source config with every sealed value opened: for building the connector only."""
    if not any(is_sealed(v) for v in config.values()):
        return config
    if box is None:
        raise SecretError("this source's credentials are encrypted but QUARRY_SECRET_KEY is not set")
    return {k: box.open(v) for k, v in config.items()}
