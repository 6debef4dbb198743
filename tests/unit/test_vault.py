"""The card vault: AES-256-GCM tokens with key ids, rotation, and keyed fingerprints."""

import base64
import os

import pytest

from app.adapters.vault import (
    DEVELOPMENT_FINGERPRINT_KEY,
    DEVELOPMENT_KEY_ID,
    DEVELOPMENT_KEYS_SPEC,
    CardVault,
    VaultError,
    is_development_material,
    parse_keys_spec,
)

PAN = "4242424242424242"
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
FINGERPRINT_KEY = b"f" * 32


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def vault() -> CardVault:
    return CardVault(keys={"a": KEY_A}, current_key_id="a", fingerprint_key=FINGERPRINT_KEY)


@pytest.fixture
def rotated() -> CardVault:
    """Key b is current; key a is retired but still configured."""
    return CardVault(
        keys={"a": KEY_A, "b": KEY_B}, current_key_id="b", fingerprint_key=FINGERPRINT_KEY
    )


def test_card_number_round_trips_through_the_vault(vault: CardVault) -> None:
    token = vault.encrypt(PAN)
    assert vault.decrypt(token) == PAN


def test_card_number_is_stored_without_spaces_and_dashes(vault: CardVault) -> None:
    assert vault.decrypt(vault.encrypt("4242 4242-4242 4242")) == PAN


def test_token_names_format_version_and_key_id(vault: CardVault) -> None:
    version, key_id, payload = vault.encrypt(PAN).split(".")
    assert (version, key_id) == ("v1", "a")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert len(raw) == 12 + len(PAN) + 16  # nonce + ciphertext + GCM tag


def test_every_encryption_uses_a_fresh_nonce(vault: CardVault) -> None:
    tokens = {vault.encrypt(PAN) for _ in range(50)}
    assert len(tokens) == 50
    nonces = {base64.urlsafe_b64decode(t.split(".")[2] + "==")[:12] for t in tokens}
    assert len(nonces) == 50


def test_card_number_is_absent_from_the_token(vault: CardVault) -> None:
    token = vault.encrypt(PAN)
    assert PAN not in token
    assert PAN.encode() not in base64.urlsafe_b64decode(token.split(".")[2] + "==")


def test_old_tokens_still_decrypt_after_key_rotation(vault: CardVault, rotated: CardVault) -> None:
    old_token = vault.encrypt(PAN)
    assert rotated.decrypt(old_token) == PAN
    assert rotated.needs_reencryption(old_token)


def test_new_tokens_use_the_current_key_after_rotation(rotated: CardVault) -> None:
    token = rotated.encrypt(PAN)
    assert rotated.key_id_of(token) == "b"
    assert not rotated.needs_reencryption(token)
    vault_without_b = CardVault(keys={"a": KEY_A}, current_key_id="a", fingerprint_key=b"f" * 32)
    with pytest.raises(VaultError, match="unknown key id 'b'"):
        vault_without_b.decrypt(token)


def test_token_with_unknown_key_id_is_refused(vault: CardVault) -> None:
    token = vault.encrypt(PAN).replace("v1.a.", "v1.zz.", 1)
    with pytest.raises(VaultError, match="unknown key id"):
        vault.decrypt(token)


def test_tampered_token_is_detected(vault: CardVault) -> None:
    version, key_id, payload = vault.encrypt(PAN).split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[14] ^= 0x01
    tampered = f"{version}.{key_id}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(VaultError, match="failed authentication"):
        vault.decrypt(tampered)


def test_token_relabelled_with_another_key_id_is_detected() -> None:
    # Both ids hold the same key: only the authenticated header tells them apart.
    same_key = CardVault(
        keys={"a": KEY_A, "b": KEY_A}, current_key_id="a", fingerprint_key=FINGERPRINT_KEY
    )
    token = same_key.encrypt(PAN).replace("v1.a.", "v1.b.", 1)
    with pytest.raises(VaultError, match="failed authentication"):
        same_key.decrypt(token)


def test_associated_data_binds_the_token_to_its_row(vault: CardVault) -> None:
    token = vault.encrypt(PAN, associated_data=b"txn_1")
    assert vault.decrypt(token, associated_data=b"txn_1") == PAN
    with pytest.raises(VaultError, match="failed authentication"):
        vault.decrypt(token, associated_data=b"txn_2")


@pytest.mark.parametrize(
    "token", ["", "v1", "v1.a", "v2.a.AAAA", "v1.a b.AAAA", "v1.a.!!!!", "v1.a.AAAA"]
)
def test_malformed_tokens_are_refused(vault: CardVault, token: str) -> None:
    with pytest.raises(VaultError):
        vault.decrypt(token)


def test_fingerprint_is_stable_across_key_rotation(vault: CardVault, rotated: CardVault) -> None:
    assert vault.fingerprint(PAN) == rotated.fingerprint(PAN)
    assert vault.fingerprint(PAN) == vault.fingerprint("4242 4242 4242 4242")
    assert len(vault.fingerprint(PAN)) == 64
    assert vault.fingerprint(PAN) != vault.fingerprint("4111111111111111")


def test_fingerprint_depends_on_the_fingerprint_key(vault: CardVault) -> None:
    other = CardVault(keys={"a": KEY_A}, current_key_id="a", fingerprint_key=b"g" * 32)
    assert other.fingerprint(PAN) != vault.fingerprint(PAN)


@pytest.mark.parametrize("pan", ["4242x4242", "\uff14\uff12" * 4, "4242\n4242"])
def test_non_digit_card_numbers_are_refused_without_echoing_them(
    vault: CardVault, pan: str
) -> None:
    for operation in (vault.encrypt, vault.fingerprint):
        with pytest.raises(VaultError) as caught:
            operation(pan)
        assert pan not in str(caught.value)


def test_card_number_and_keys_never_appear_in_repr_or_errors(vault: CardVault) -> None:
    token = vault.encrypt(PAN)
    texts = [repr(vault), str(vault)]
    for bad in (token[:-4] + "AAAA", token.replace("v1.a.", "v1.x.")):
        with pytest.raises(VaultError) as caught:
            vault.decrypt(bad)
        texts += [str(caught.value), repr(caught.value)]
    for text in texts:
        assert PAN not in text
        assert b64(KEY_A) not in text
        assert token.split(".")[2] not in text
    assert repr(vault) == "CardVault(current_key_id='a', key_ids=['a'])"


@pytest.mark.parametrize(
    ("keys", "current", "fingerprint_key", "message"),
    [
        ({}, "a", FINGERPRINT_KEY, "no card encryption keys"),
        ({"a": b"short"}, "a", FINGERPRINT_KEY, "32 bytes"),
        ({"a": KEY_A}, "b", FINGERPRINT_KEY, "'b' is not configured"),
        ({"a.b": KEY_A}, "a.b", FINGERPRINT_KEY, "must be 1-64"),
        ({"a": KEY_A}, "a", b"short", "fingerprint key"),
    ],
)
def test_vault_refuses_invalid_key_configuration(
    keys: dict[str, bytes], current: str, fingerprint_key: bytes, message: str
) -> None:
    with pytest.raises(VaultError, match=message):
        CardVault(keys=keys, current_key_id=current, fingerprint_key=fingerprint_key)


def test_vault_is_built_from_configuration_strings() -> None:
    spec = f"a:{b64(KEY_A)}, b:{base64.urlsafe_b64encode(KEY_B).decode().rstrip('=')}"
    vault = CardVault.from_config(spec, "b", b64(FINGERPRINT_KEY))
    assert vault.current_key_id == "b"
    assert vault.key_ids == {"a", "b"}
    reference = CardVault(
        keys={"a": KEY_A, "b": KEY_B}, current_key_id="b", fingerprint_key=FINGERPRINT_KEY
    )
    assert reference.decrypt(vault.encrypt(PAN)) == PAN
    assert vault.fingerprint(PAN) == reference.fingerprint(PAN)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no card encryption keys"),
        ("a", "must look like"),
        ("a:not base64!", "not valid base64"),
        (f"a:{b64(KEY_A)},a:{b64(KEY_B)}", "listed twice"),
        (f"a:{b64(b'x' * 16)}", "32 bytes"),
    ],
)
def test_malformed_key_configuration_is_refused_without_showing_keys(
    spec: str, message: str
) -> None:
    with pytest.raises(VaultError, match=message) as caught:
        CardVault.from_config(spec, "a", b64(FINGERPRINT_KEY))
    assert b64(KEY_A) not in str(caught.value)
    assert b64(KEY_B) not in str(caught.value)


def test_parsed_keys_are_the_decoded_bytes() -> None:
    assert parse_keys_spec(f"a:{b64(KEY_A)},b:{b64(KEY_B)}") == {"a": KEY_A, "b": KEY_B}


def test_development_material_builds_a_working_vault() -> None:
    vault = CardVault.from_config(
        DEVELOPMENT_KEYS_SPEC, DEVELOPMENT_KEY_ID, DEVELOPMENT_FINGERPRINT_KEY
    )
    assert vault.decrypt(vault.encrypt(PAN)) == PAN


def test_development_material_is_recognised() -> None:
    own_keys = f"prod-1:{b64(os.urandom(32))}"
    own_fingerprint = b64(os.urandom(32))
    assert is_development_material(DEVELOPMENT_KEYS_SPEC, DEVELOPMENT_FINGERPRINT_KEY)
    assert is_development_material(DEVELOPMENT_KEYS_SPEC, own_fingerprint)
    assert is_development_material(own_keys, DEVELOPMENT_FINGERPRINT_KEY)
    assert not is_development_material(own_keys, own_fingerprint)


def test_development_key_is_recognised_under_another_id_or_encoding() -> None:
    dev_key = parse_keys_spec(DEVELOPMENT_KEYS_SPEC)[DEVELOPMENT_KEY_ID]
    renamed = f"prod-1:{b64(os.urandom(32))},old:{base64.urlsafe_b64encode(dev_key).decode()}"
    assert is_development_material(renamed, b64(os.urandom(32)))
    raw_fingerprint = base64.b64decode(DEVELOPMENT_FINGERPRINT_KEY)
    assert is_development_material(f"prod-1:{b64(os.urandom(32))}", raw_fingerprint)


def test_malformed_configuration_is_not_mistaken_for_development_material() -> None:
    assert not is_development_material("not a key spec", "not base64!")
    assert is_development_material(f"garbage,{DEVELOPMENT_KEYS_SPEC}", "not base64!")
