import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.identity import (
    PEER_ID_LENGTH,
    Identity,
    IdentityError,
    decode_peer_id,
    encode_peer_id,
    normalize_peer_id,
)


def test_save_load_roundtrip_with_mode_0600(tmp_path):
    identity = Identity.generate()
    path = tmp_path / "id.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).peer_id == identity.peer_id
    assert len(identity.peer_id) == PEER_ID_LENGTH


def test_load_or_create_is_stable(tmp_path):
    path = tmp_path / "sub" / "id.key"
    first = Identity.load_or_create(path)
    assert Identity.load_or_create(path).peer_id == first.peer_id


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "id.key"
    Identity.generate().save(path)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        Identity.generate().save(path)


def test_too_open_permissions_are_refused(tmp_path):
    path = tmp_path / "id.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a PEM"),
        (b"garbage", "not a PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "unreadable"),
    ],
)
def test_bad_content_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "id.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match=message):
        Identity.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(IdentityError, match="cannot read"):
        Identity.load(tmp_path / "nope")


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_roundtrip(raw):
    text = encode_peer_id(raw)
    assert decode_peer_id(text) == raw
    assert decode_peer_id(text.upper()) == raw  # case-insensitive
    assert normalize_peer_id(" " + text.upper() + " ") == text


@given(st.text(max_size=80))
def test_decode_peer_id_rejects_garbage_cleanly(text):
    try:
        raw = decode_peer_id(text)
    except IdentityError:
        return
    assert len(raw) == 32
