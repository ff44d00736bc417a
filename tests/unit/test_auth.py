import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.auth import (
    AuthError,
    PeerPolicy,
    Proof,
    Refusal,
    RefusalReason,
    Role,
    build_proof,
    build_refusal,
    parse_auth,
    verify_proof,
)
from discretpeer.identity import Identity

TOKEN = os.urandom(32)


def body(frame: bytes) -> bytes:
    return frame[2:]


def test_proof_verifies_only_for_its_connection_and_role():
    identity = Identity.generate()
    exporter = os.urandom(32)
    proof = parse_auth(body(build_proof(identity, Role.DIALER, exporter, TOKEN)))
    assert isinstance(proof, Proof)
    assert verify_proof(proof, Role.DIALER, exporter) == identity.peer_id
    with pytest.raises(AuthError):  # replayed on another connection
        verify_proof(proof, Role.DIALER, os.urandom(32))
    with pytest.raises(AuthError):  # reflected back with the other role
        verify_proof(proof, Role.LISTENER, exporter)


def test_proof_with_swapped_key_fails():
    a, b = Identity.generate(), Identity.generate()
    exporter = os.urandom(32)
    proof = parse_auth(body(build_proof(a, Role.DIALER, exporter, TOKEN)))
    forged = Proof(token=proof.token, public_key=b.public_key, signature=proof.signature)
    with pytest.raises(AuthError):
        verify_proof(forged, Role.DIALER, exporter)


def test_refusal_roundtrip():
    refusal = parse_auth(body(build_refusal(RefusalReason.UNEXPECTED_PEER, "not you " * 100)))
    assert isinstance(refusal, Refusal) and refusal.reason == RefusalReason.UNEXPECTED_PEER
    assert len(refusal.text.encode()) <= 200


@given(st.binary(max_size=300))
def test_parse_auth_rejects_garbage_cleanly(data):
    with contextlib.suppress(AuthError):
        parse_auth(data)


def test_policy_forms():
    a, b, c = (Identity.generate().peer_id for _ in range(3))
    assert PeerPolicy(a).accepts(a) and not PeerPolicy(a).accepts(b)
    assert PeerPolicy(a.upper()).accepts(a)
    assert PeerPolicy({a, b}).accepts(b) and not PeerPolicy([a, b]).accepts(c)
    assert PeerPolicy(lambda pid: pid == c).accepts(c) and not PeerPolicy(lambda pid: pid == c).accepts(a)
    assert PeerPolicy(None).accepts(c)

    def boom(pid):
        raise RuntimeError("app bug")

    assert not PeerPolicy(boom).accepts(a)
    with pytest.raises(ValueError):
        PeerPolicy("not-a-peer-id")
    with pytest.raises(ValueError):
        PeerPolicy(set())
