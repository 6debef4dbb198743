"""The card vault: what the use cases need to keep a card without keeping it in clear."""

from __future__ import annotations

from typing import Protocol


class CardVault(Protocol):
    """Encrypts and fingerprints card numbers; never logs or echoes them."""

    def encrypt(self, pan: str, *, associated_data: bytes = b"") -> str:
        """The card number encrypted under the current key, as a self-describing token."""
        ...

    def fingerprint(self, pan: str) -> str:
        """A keyed digest of the card number, stable across key rotations."""
        ...
