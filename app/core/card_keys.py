"""Card key configuration: the ``kid:base64,kid:base64`` format, and the development keys.

The vault (``app.adapters.vault``) encrypts with these keys; the settings
(``app.core.config``) refuse the development material in production. Both read the
format from here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from typing import Final

DEVELOPMENT_KEY_ID: Final = "dev-1"
"""Key id of the development encryption key; production refuses it."""

DEVELOPMENT_KEYS_SPEC: Final = f"{DEVELOPMENT_KEY_ID}:309Yh6+Miv+eu4mK5b8gM54XSw+dXC9PDkhEkmaJe3Y="
"""Development-only encryption keys, in the ``kid:base64`` format of the configuration."""

DEVELOPMENT_FINGERPRINT_KEY: Final = "g4ugg45+ONjHGxb51IefApTSYy/drPRFDuA0YQNmp5U="
"""Development-only fingerprint HMAC key (base64); production refuses it."""

KEY_ID_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a key id looks like."""


class VaultError(Exception):
    """A card token cannot be decrypted, or the vault's key configuration is invalid."""


def decode_b64(value: str, what: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not; errors name ``what``, never the value."""
    # Accepts the standard and the URL-safe alphabet, with or without padding.
    text = value.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode((text + "=" * (-len(text) % 4)).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise VaultError(f"{what} is not valid base64") from None


def parse_keys_spec(keys_spec: str) -> dict[str, bytes]:
    """Parse ``"kid1:base64key,kid2:base64key"`` into key id -> key bytes.

    Raises:
        VaultError: If the spec is empty or malformed, a key id repeats, or a key is not
            base64 of 32 bytes. Messages name key ids, never key material.
    """
    keys: dict[str, bytes] = {}
    for entry in keys_spec.split(","):
        if not entry.strip():
            continue
        key_id, sep, encoded = entry.strip().partition(":")
        key_id = key_id.strip()
        if not sep or not KEY_ID_SHAPE.fullmatch(key_id):
            raise VaultError("card encryption keys must look like 'kid1:base64key,kid2:base64key'")
        if key_id in keys:
            raise VaultError(f"card encryption key id {key_id!r} is listed twice")
        keys[key_id] = decode_b64(encoded, f"card encryption key {key_id!r}")
    if not keys:
        raise VaultError("no card encryption keys are configured")
    return keys


def is_development_material(keys_spec: str, fingerprint_key: str | bytes) -> bool:
    """Whether configured vault keys include the development key material.

    Args:
        keys_spec: The configured ``"kid:base64key,..."`` encryption keys.
        fingerprint_key: The configured fingerprint key, base64 text or raw bytes.

    Returns:
        True if any encryption key or the fingerprint key is a development key (compared
        by key bytes, so re-encoding or renaming the key id does not hide it).
    """
    dev_key_b64 = DEVELOPMENT_KEYS_SPEC.split(":", 1)[1]
    if dev_key_b64 in keys_spec:
        return True
    dev_key = decode_b64(dev_key_b64, "development card encryption key")
    try:
        configured = list(parse_keys_spec(keys_spec).values())
    except VaultError:
        configured = []  # malformed keys are refused when the vault is built
    if any(hmac.compare_digest(key, dev_key) for key in configured):
        return True
    dev_fingerprint = decode_b64(DEVELOPMENT_FINGERPRINT_KEY, "development fingerprint key")
    if isinstance(fingerprint_key, str):
        try:
            fingerprint_key = decode_b64(fingerprint_key, "card fingerprint key")
        except VaultError:
            return False
    return hmac.compare_digest(fingerprint_key, dev_fingerprint)
