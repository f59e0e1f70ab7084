#!/usr/bin/env python3
"""A second, independent implementation of Noise_IK_25519_ChaChaPoly_BLAKE2s (Noise spec rev 34),
written from the specification with Python's hashlib/hmac and the `cryptography` package. It
derives the known-answer vectors that shared-proto's `noise::tests::known_answer_vectors` checks
snow (as this project configures it) against. Run: python3 scripts/noise-ik-vectors.py
"""
import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
HASHLEN = 32


def H(data):
    return hashlib.blake2s(data).digest()


def hmac_hash(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf(ck, ikm, n):
    temp = hmac_hash(ck, ikm)
    out1 = hmac_hash(temp, b"\x01")
    out2 = hmac_hash(temp, out1 + b"\x02")
    if n == 2:
        return out1, out2
    return out1, out2, hmac_hash(temp, out2 + b"\x03")


def pub(priv32):
    return X25519PrivateKey.from_private_bytes(priv32).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def dh(priv32, pub32):
    return X25519PrivateKey.from_private_bytes(priv32).exchange(X25519PublicKey.from_public_bytes(pub32))


def nonce(n):
    return b"\x00" * 4 + n.to_bytes(8, "little")


class Cipher:
    def __init__(self, k=None):
        self.k, self.n = k, 0

    def enc(self, ad, pt):
        if self.k is None:
            return pt
        ct = ChaCha20Poly1305(self.k).encrypt(nonce(self.n), pt, ad)
        self.n += 1
        return ct


class Symmetric:
    def __init__(self):
        self.h = NAME.ljust(HASHLEN, b"\x00") if len(NAME) <= HASHLEN else H(NAME)
        self.ck = self.h
        self.c = Cipher()

    def mix_hash(self, data):
        self.h = H(self.h + data)

    def mix_key(self, ikm):
        self.ck, k = hkdf(self.ck, ikm, 2)
        self.c = Cipher(k[:32])

    def enc_hash(self, pt):
        ct = self.c.enc(self.h, pt)
        self.mix_hash(ct)
        return ct

    def split(self):
        k1, k2 = hkdf(self.ck, b"", 2)
        return Cipher(k1[:32]), Cipher(k2[:32])


def handshake(prologue, s_i, s_r, e_i, e_r, payload1, payload2):
    """Both messages as the initiator and responder would write them (both sides agree)."""
    rs = pub(s_r)
    st = Symmetric()
    st.mix_hash(prologue)
    st.mix_hash(rs)  # pre-message: <- s
    # -> e, es, s, ss
    msg1 = pub(e_i)
    st.mix_hash(pub(e_i))
    st.mix_key(dh(e_i, rs))
    msg1 += st.enc_hash(pub(s_i))
    st.mix_key(dh(s_i, rs))
    msg1 += st.enc_hash(payload1)
    # <- e, ee, se
    msg2 = pub(e_r)
    st.mix_hash(pub(e_r))
    st.mix_key(dh(e_i, pub(e_r)))   # ee
    st.mix_key(dh(s_i, pub(e_r)))   # se (initiator's s with responder's e)
    msg2 += st.enc_hash(payload2)
    c1, c2 = st.split()
    return msg1, msg2, c1, c2, st.h


if __name__ == "__main__":
    cluster = b"gr2q7gf5lh6pzfdnurnkvputhpqvjjfv"
    prologue = b"hub-relay noise v1\x00" + cluster
    s_i, s_r, e_i, e_r = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32, bytes([4]) * 32
    msg1, msg2, c1, c2, h = handshake(prologue, s_i, s_r, e_i, e_r, b"kat payload 1", b"kat payload 2")
    print("msg1", msg1.hex())
    print("msg2", msg2.hex())
    print("handshake_hash", h.hex())
    print("initiator_transport_0", c1.enc(b"", b"kat transport").hex())
    print("responder_transport_0", c2.enc(b"", b"kat answer").hex())
