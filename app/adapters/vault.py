"""The card vault: AES-256-GCM encryption of card numbers and keyed card fingerprints.

A stored card number is a self-describing token ``v1.<key_id>.<nonce+ciphertext>``: the
key id picks the decryption key, so keys can be rotated (new rows use the current key,
old rows stay readable while their retired key is still configured). The fingerprint is
an HMAC-SHA256 of the card number under a separate key, so the same card matches across
rows and key rotations without the number being stored in clear.

Nothing here ever puts a card number, a token or key material into a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.domain.cards import normalize_card_number

FORMAT_VERSION: Final = "v1"
"""Format version, the token's first segment."""

KEY_BYTES: Final = 32
"""AES-256 key length, and the minimum fingerprint key length."""

NONCE_BYTES: Final = 12
"""96-bit GCM nonce, fresh and random for every encryption."""

DEVELOPMENT_KEY_ID: Final = "dev-1"
"""Key id of the development encryption key; production refuses it."""

DEVELOPMENT_KEYS_SPEC: Final = f"{DEVELOPMENT_KEY_ID}:309Yh6+Miv+eu4mK5b8gM54XSw+dXC9PDkhEkmaJe3Y="
"""Development-only encryption keys, in the ``kid:base64`` format of the configuration."""

DEVELOPMENT_FINGERPRINT_KEY: Final = "g4ugg45+ONjHGxb51IefApTSYy/drPRFDuA0YQNmp5U="
"""Development-only fingerprint HMAC key (base64); production refuses it."""

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class VaultError(Exception):
    """A card token cannot be decrypted, or the vault's key configuration is invalid."""


def _decode_b64(value: str, what: str) -> bytes:
    # Accepts the standard and the URL-safe alphabet, with or without padding.
    text = value.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode((text + "=" * (-len(text) % 4)).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise VaultError(f"{what} is not valid base64") from None


def _pan_bytes(pan: str) -> bytes:
    digits = normalize_card_number(pan)
    if not (digits.isascii() and digits.isdigit()):
        # Never echo the value: it may be a card number with a typo in it.
        raise VaultError("a card number must contain only digits, spaces and dashes")
    return digits.encode("ascii")


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
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise VaultError("card encryption keys must look like 'kid1:base64key,kid2:base64key'")
        if key_id in keys:
            raise VaultError(f"card encryption key id {key_id!r} is listed twice")
        keys[key_id] = _decode_b64(encoded, f"card encryption key {key_id!r}")
    if not keys:
        raise VaultError("no card encryption keys are configured")
    return keys


class CardVault:
    """Encrypts, decrypts and fingerprints card numbers.

    Args:
        keys: Key id -> 32-byte AES-256-GCM key; retired keys stay here to read old rows.
        current_key_id: The key id used for new encryptions.
        fingerprint_key: HMAC-SHA256 key for fingerprints, at least 32 bytes.

    Raises:
        VaultError: If a key id or key length is invalid or ``current_key_id`` is missing.
    """

    __slots__ = ("_ciphers", "_current_key_id", "_fingerprint_key")

    def __init__(
        self, *, keys: Mapping[str, bytes], current_key_id: str, fingerprint_key: bytes
    ) -> None:
        if not keys:
            raise VaultError("no card encryption keys are configured")
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise VaultError(f"card encryption key id {key_id!r} must be 1-64 of [A-Za-z0-9_-]")
            if len(key) != KEY_BYTES:
                raise VaultError(
                    f"card encryption key {key_id!r} must be {KEY_BYTES} bytes (AES-256)"
                )
            ciphers[key_id] = AESGCM(bytes(key))
        if current_key_id not in ciphers:
            raise VaultError(f"current card encryption key id {current_key_id!r} is not configured")
        if len(fingerprint_key) < KEY_BYTES:
            raise VaultError(f"card fingerprint key must be at least {KEY_BYTES} bytes")
        self._ciphers: Mapping[str, AESGCM] = MappingProxyType(ciphers)
        self._current_key_id = current_key_id
        self._fingerprint_key = bytes(fingerprint_key)

    @classmethod
    def from_config(cls, keys_spec: str, current_key_id: str, fingerprint_key_b64: str) -> Self:
        """Build a vault from configuration strings.

        Args:
            keys_spec: ``"kid1:base64key,kid2:base64key"``.
            current_key_id: The key id used for new encryptions.
            fingerprint_key_b64: The fingerprint HMAC key, base64.

        Raises:
            VaultError: If any value is malformed.
        """
        return cls(
            keys=parse_keys_spec(keys_spec),
            current_key_id=current_key_id.strip(),
            fingerprint_key=_decode_b64(fingerprint_key_b64, "card fingerprint key"),
        )

    @property
    def current_key_id(self) -> str:
        """The key id used for new encryptions."""
        return self._current_key_id

    @property
    def key_ids(self) -> frozenset[str]:
        """Every configured key id, current and retired."""
        return frozenset(self._ciphers)

    def __repr__(self) -> str:
        return (
            f"CardVault(current_key_id={self._current_key_id!r}, key_ids={sorted(self._ciphers)})"
        )

    @staticmethod
    def _aad(key_id: str, associated_data: bytes) -> bytes:
        # The header is authenticated too, so a token cannot be relabelled.
        return f"{FORMAT_VERSION}.{key_id}".encode("ascii") + b"\x00" + associated_data

    def encrypt(self, pan: str, *, associated_data: bytes = b"") -> str:
        """Encrypt a card number under the current key.

        Args:
            pan: The card number; spaces and dashes are removed first.
            associated_data: Context bound to the token (e.g. the transaction id); the same
                bytes must be given to :meth:`decrypt`.

        Returns:
            ``"v1.<key_id>.<urlsafe base64 of nonce + ciphertext + tag>"``.

        Raises:
            VaultError: If the card number contains anything but digits, spaces and dashes.
        """
        key_id = self._current_key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce,
            _pan_bytes(pan),
            self._aad(key_id, associated_data),
        )
        payload = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{FORMAT_VERSION}.{key_id}.{payload}"

    def decrypt(self, token: str, *, associated_data: bytes = b"") -> str:
        """Decrypt a token made by :meth:`encrypt` with any configured key.

        Raises:
            VaultError: If the token is malformed, its key id is not configured, or it
                fails authentication (tampered, or different associated data).
        """
        key_id = self.key_id_of(token)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise VaultError(f"card token uses unknown key id {key_id!r}")
        raw = _decode_b64(token.split(".", 2)[2], "card token")
        if len(raw) < NONCE_BYTES + 16:
            raise VaultError("card token is truncated")
        try:
            plain = cipher.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(key_id, associated_data)
            )
        except InvalidTag:
            raise VaultError("card token failed authentication") from None
        return plain.decode("ascii")

    def key_id_of(self, token: str) -> str:
        """Return the key id a token was encrypted with.

        Raises:
            VaultError: If the token is not a ``v1`` vault token.
        """
        parts = token.split(".", 2)
        if len(parts) != 3 or parts[0] != FORMAT_VERSION or not _KEY_ID.fullmatch(parts[1]):
            raise VaultError("card token is malformed")
        return parts[1]

    def needs_reencryption(self, token: str) -> bool:
        """Whether a token was encrypted with a key other than the current one."""
        return self.key_id_of(token) != self._current_key_id

    def fingerprint(self, pan: str) -> str:
        """Return the hex HMAC-SHA256 of the normalized card number (stable across rotation).

        Raises:
            VaultError: If the card number contains anything but digits, spaces and dashes.
        """
        return hmac.new(self._fingerprint_key, _pan_bytes(pan), hashlib.sha256).hexdigest()


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
    dev_key = _decode_b64(dev_key_b64, "development card encryption key")
    try:
        configured = list(parse_keys_spec(keys_spec).values())
    except VaultError:
        configured = []  # malformed keys are refused when the vault is built
    if any(hmac.compare_digest(key, dev_key) for key in configured):
        return True
    dev_fingerprint = _decode_b64(DEVELOPMENT_FINGERPRINT_KEY, "development fingerprint key")
    if isinstance(fingerprint_key, str):
        try:
            fingerprint_key = _decode_b64(fingerprint_key, "card fingerprint key")
        except VaultError:
            return False
    return hmac.compare_digest(fingerprint_key, dev_fingerprint)
