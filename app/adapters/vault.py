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
import hashlib
import hmac
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.core.card_keys import (
    DEVELOPMENT_FINGERPRINT_KEY,
    DEVELOPMENT_KEY_ID,
    DEVELOPMENT_KEYS_SPEC,
    KEY_ID_SHAPE,
    VaultError,
    decode_b64,
    is_development_material,
    parse_keys_spec,
)
from app.domain.cards import normalize_card_number

__all__ = [
    "DEVELOPMENT_FINGERPRINT_KEY",
    "DEVELOPMENT_KEYS_SPEC",
    "DEVELOPMENT_KEY_ID",
    "CardVault",
    "VaultError",
    "is_development_material",
    "parse_keys_spec",
]

FORMAT_VERSION: Final = "v1"
"""Format version, the token's first segment."""

KEY_BYTES: Final = 32
"""AES-256 key length, and the minimum fingerprint key length."""

NONCE_BYTES: Final = 12
"""96-bit GCM nonce, fresh and random for every encryption."""


def _pan_bytes(pan: str) -> bytes:
    digits = normalize_card_number(pan)
    if not (digits.isascii() and digits.isdigit()):
        # Never echo the value: it may be a card number with a typo in it.
        raise VaultError("a card number must contain only digits, spaces and dashes")
    return digits.encode("ascii")


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
            if not KEY_ID_SHAPE.fullmatch(key_id):
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
            fingerprint_key=decode_b64(fingerprint_key_b64, "card fingerprint key"),
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
        return self._seal(_pan_bytes(pan), associated_data)

    def _seal(self, plain: bytes, associated_data: bytes) -> str:
        key_id = self._current_key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, plain, self._aad(key_id, associated_data))
        payload = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{FORMAT_VERSION}.{key_id}.{payload}"

    def decrypt(self, token: str, *, associated_data: bytes = b"") -> str:
        """Decrypt a token made by :meth:`encrypt` with any configured key.

        Raises:
            VaultError: If the token is malformed, its key id is not configured, or it
                fails authentication (tampered, or different associated data).
        """
        return self._open(token, associated_data).decode("ascii")

    def seal(self, secret: str, *, associated_data: bytes) -> str:
        """Encrypt another secret than a card number (a webhook signing secret) the same
        way, under the current key; ``associated_data`` names what it is for, so a token
        cannot be swapped for a card's or another endpoint's."""
        return self._seal(secret.encode("utf-8"), b"secret\x00" + associated_data)

    def unseal(self, token: str, *, associated_data: bytes) -> str:
        """The secret in a token made by :meth:`seal` with the same associated data.

        Raises:
            VaultError: As :meth:`decrypt`.
        """
        return self._open(token, b"secret\x00" + associated_data).decode("utf-8")

    def _open(self, token: str, associated_data: bytes) -> bytes:
        key_id = self.key_id_of(token)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise VaultError(f"card token uses unknown key id {key_id!r}")
        raw = decode_b64(token.split(".", 2)[2], "card token")
        if len(raw) < NONCE_BYTES + 16:
            raise VaultError("card token is truncated")
        try:
            return cipher.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(key_id, associated_data)
            )
        except InvalidTag:
            raise VaultError("card token failed authentication") from None

    def key_id_of(self, token: str) -> str:
        """Return the key id a token was encrypted with.

        Raises:
            VaultError: If the token is not a ``v1`` vault token.
        """
        parts = token.split(".", 2)
        if len(parts) != 3 or parts[0] != FORMAT_VERSION or not KEY_ID_SHAPE.fullmatch(parts[1]):
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
