"""The algorithm registry: round trips, tampering, wrong keys, aliases and key sizes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from core.algorithms import (
    Algorithm,
    AlgorithmError,
    DecryptionError,
    InvalidSignatureError,
    Operation,
    UnknownAlgorithmError,
    UnsupportedOperationError,
    canonical_names,
    resolve,
)

CANONICAL = [
    "AES-256-GCM",
    "ChaCha20-Poly1305",
    "HMAC-SHA256",
    "HMAC-SHA512",
    "Ed25519",
    "ECDSA-P256",
    "RSA-2048",
    "ECDSA-secp256k1",
    "RSA-4096",
    # Post-quantum and hybrid: tests/unit/test_pqc.py.
    "ML-DSA-44",
    "ML-DSA-65",
    "ML-DSA-87",
    "Falcon-512",
    "Falcon-1024",
    "ML-KEM-512",
    "ML-KEM-768",
    "ML-KEM-1024",
    "Ed25519+ML-DSA-65",
    "X25519+ML-KEM-768",
]
AEADS = ["AES-256-GCM", "ChaCha20-Poly1305"]
SIGNERS = [
    "HMAC-SHA256",
    "HMAC-SHA512",
    "Ed25519",
    "ECDSA-P256",
    "RSA-2048",
    "ECDSA-secp256k1",
    "RSA-4096",
]
ASYMMETRIC = ["Ed25519", "ECDSA-P256", "RSA-2048", "ECDSA-secp256k1", "RSA-4096"]


@pytest.fixture(scope="module")
def materials() -> dict[str, tuple[bytes, bytes]]:
    """Two independent materials per algorithm (RSA-4096 generation takes ~1 s: do it once)."""
    return {name: (resolve(name).generate(), resolve(name).generate()) for name in CANONICAL}


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_canonical_names_are_exactly_the_registered_set() -> None:
    assert canonical_names() == CANONICAL
    for name in CANONICAL:
        assert resolve(name).name == name


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("aes-256-gcm", "AES-256-GCM"),
        ("chacha20-poly1305", "ChaCha20-Poly1305"),
        ("hmac-sha256", "HMAC-SHA256"),
        ("sha256", "HMAC-SHA256"),
        ("SHA-256", "HMAC-SHA256"),
        ("sha512", "HMAC-SHA512"),
        ("SHA-512", "HMAC-SHA512"),
        ("RSA", "RSA-2048"),
        ("rsa-2048", "RSA-2048"),
        ("ecdsa-p256", "ECDSA-P256"),
        ("P-256", "ECDSA-P256"),
        ("ES256", "ECDSA-P256"),
        ("ed25519", "Ed25519"),
        ("EdDSA", "Ed25519"),
        ("eDdSa", "Ed25519"),
        ("ES256K", "ECDSA-secp256k1"),
        ("es256k", "ECDSA-secp256k1"),
        ("secp256k1", "ECDSA-secp256k1"),
        ("ECDSA-SECP256K1", "ECDSA-secp256k1"),
        ("rsa-4096", "RSA-4096"),
        ("RSA4096", "RSA-4096"),
    ],
)
def test_aliases_resolve_case_insensitively(alias: str, canonical: str) -> None:
    assert resolve(alias) is resolve(canonical)
    assert resolve(alias).name == canonical


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(UnknownAlgorithmError) as info:
        resolve("DES")
    message = str(info.value)
    assert "DES" in message
    for name in CANONICAL:
        assert name in message
    assert isinstance(info.value, AlgorithmError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "kind", "operations", "default_bits"),
    [
        ("AES-256-GCM", "symmetric", {"encrypt", "decrypt"}, 256),
        ("ChaCha20-Poly1305", "symmetric", {"encrypt", "decrypt"}, 256),
        ("HMAC-SHA256", "mac", {"sign", "verify"}, 256),
        ("HMAC-SHA512", "mac", {"sign", "verify"}, 512),
        ("Ed25519", "signature", {"sign", "verify"}, 256),
        ("ECDSA-P256", "signature", {"sign", "verify"}, 256),
        ("RSA-2048", "signature", {"sign", "verify", "encrypt", "decrypt"}, 2048),
        ("ECDSA-secp256k1", "signature", {"sign", "verify"}, 256),
        ("RSA-4096", "signature", {"sign", "verify", "encrypt", "decrypt"}, 4096),
    ],
)
def test_metadata(name: str, kind: str, operations: set[str], default_bits: int) -> None:
    algorithm = resolve(name)
    assert algorithm.kind == kind
    assert {str(op) for op in algorithm.operations} == operations
    assert algorithm.default_key_bits == default_bits


# --- key sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["AES-256-GCM", "ChaCha20-Poly1305", "Ed25519", "ECDSA-P256", "ECDSA-secp256k1"]
)
@pytest.mark.parametrize("bits", [128, 192, 255, 257, 512, 0, -256])
def test_fixed_size_algorithms_reject_other_sizes(name: str, bits: int) -> None:
    algorithm = resolve(name)
    algorithm.validate_key_bits(256)
    with pytest.raises(AlgorithmError, match=name):
        algorithm.validate_key_bits(bits)
    with pytest.raises(AlgorithmError):
        algorithm.generate(bits)


def test_rsa_accepts_only_2048() -> None:
    algorithm = resolve("RSA-2048")
    algorithm.validate_key_bits(2048)
    for bits in (1024, 3072, 4096, 256):
        with pytest.raises(AlgorithmError):
            algorithm.validate_key_bits(bits)


def test_rsa_4096_accepts_only_4096() -> None:
    algorithm = resolve("RSA-4096")
    algorithm.validate_key_bits(4096)
    for bits in (1024, 2048, 3072, 8192, 256):
        with pytest.raises(AlgorithmError, match="RSA-4096"):
            algorithm.validate_key_bits(bits)
        with pytest.raises(AlgorithmError):
            algorithm.generate(bits)


@pytest.mark.parametrize("name", ["HMAC-SHA256", "HMAC-SHA512"])
def test_hmac_key_sizes(name: str) -> None:
    algorithm = resolve(name)
    for bits in (256, 264, 512, 1024, 8192):
        algorithm.validate_key_bits(bits)
        assert len(algorithm.generate(bits)) == bits // 8
    for bits in (0, 128, 248, 260, 8200, 16384):
        with pytest.raises(AlgorithmError, match=str(bits)):
            algorithm.validate_key_bits(bits)


@pytest.mark.parametrize(("name", "size"), [("HMAC-SHA256", 32), ("HMAC-SHA512", 64)])
def test_hmac_default_size_is_the_hash_size(name: str, size: int) -> None:
    assert len(resolve(name).generate()) == size


def test_generated_material_is_random(materials: dict[str, tuple[bytes, bytes]]) -> None:
    for name, (a, b) in materials.items():
        assert a != b, name


# --- operations an algorithm lacks ------------------------------------------------------------


@pytest.mark.parametrize("name", CANONICAL)
def test_missing_operations_raise_unsupported(
    name: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    material = materials[name][0]
    calls: dict[Operation, Callable[[], object]] = {
        Operation.ENCRYPT: lambda: algorithm.encrypt(material, b"m", b""),
        Operation.DECRYPT: lambda: algorithm.decrypt(material, b"\0" * 64, b""),
        Operation.SIGN: lambda: algorithm.sign(material, b"m"),
        Operation.VERIFY: lambda: algorithm.verify(material, b"m", b"\0" * 64),
    }
    for operation in set(Operation) - algorithm.operations:
        with pytest.raises(UnsupportedOperationError, match=str(operation)):
            calls[operation]()


# --- AEADs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AEADS)
@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=256))
def test_aead_round_trip(name: str, plaintext: bytes, aad: bytes) -> None:
    algorithm = resolve(name)
    key = algorithm.generate()
    data = algorithm.encrypt(key, plaintext, aad)
    assert len(data) == 12 + len(plaintext) + 16
    assert algorithm.decrypt(key, data, aad) == plaintext


@pytest.mark.parametrize("name", AEADS)
@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=512), aad=st.binary(max_size=64), data=st.data())
def test_aead_any_flipped_byte_fails(
    name: str, plaintext: bytes, aad: bytes, data: st.DataObject
) -> None:
    """Every byte of nonce || ciphertext || tag is authenticated."""
    algorithm = resolve(name)
    key = algorithm.generate()
    blob = algorithm.encrypt(key, plaintext, aad)
    index = data.draw(st.integers(0, len(blob) - 1), label="index")
    with pytest.raises(DecryptionError):
        algorithm.decrypt(key, flip(blob, index), aad)


@pytest.mark.parametrize("name", AEADS)
@settings(max_examples=30, deadline=None)
@given(aad=st.binary(max_size=64), other=st.binary(max_size=64))
def test_aead_other_aad_fails(name: str, aad: bytes, other: bytes) -> None:
    if aad == other:
        return
    algorithm = resolve(name)
    key = algorithm.generate()
    with pytest.raises(DecryptionError):
        algorithm.decrypt(key, algorithm.encrypt(key, b"secret", aad), other)


@pytest.mark.parametrize("name", AEADS)
def test_aead_nonce_tag_and_truncation(
    name: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    key, other_key = materials[name]
    blob = algorithm.encrypt(key, b"attack at dawn", b"ctx")
    # Fresh random nonce per message: same input, different output.
    assert algorithm.encrypt(key, b"attack at dawn", b"ctx")[:12] != blob[:12]
    assert b"attack at dawn" not in blob
    with pytest.raises(DecryptionError):
        algorithm.decrypt(other_key, blob, b"ctx")
    for truncated in (b"", blob[:12], blob[:27], blob[:-1]):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(key, truncated, b"ctx")


@pytest.mark.parametrize("name", AEADS)
@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_aead_rejects_wrong_key_length(name: str, size: int) -> None:
    algorithm = resolve(name)
    with pytest.raises(AlgorithmError, match="32 bytes"):
        algorithm.encrypt(b"k" * size, b"x", b"")
    with pytest.raises(AlgorithmError):
        algorithm.decrypt(b"k" * size, b"\0" * 40, b"")


def test_aes_gcm_interoperates_with_cryptography() -> None:
    """The wire format is exactly nonce || AESGCM output, readable by any AES-GCM."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    algorithm = resolve("AES-256-GCM")
    key = algorithm.generate()
    blob = algorithm.encrypt(key, b"hello", b"aad")
    assert AESGCM(key).decrypt(blob[:12], blob[12:], b"aad") == b"hello"


# --- signatures and MACs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNERS)
def test_sign_verify_round_trip(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve(name)
    key, other_key = materials[name]
    signature = algorithm.sign(key, b"message")
    algorithm.verify(key, b"message", signature)
    with pytest.raises(InvalidSignatureError):
        algorithm.verify(key, b"messagE", signature)
    with pytest.raises(InvalidSignatureError):
        algorithm.verify(other_key, b"message", signature)
    with pytest.raises(InvalidSignatureError):
        algorithm.verify(key, b"message", flip(signature, len(signature) // 2))
    for garbage in (b"", b"\0", signature[:-1], signature + b"\0"):
        with pytest.raises(InvalidSignatureError):
            algorithm.verify(key, b"message", garbage)


@pytest.mark.parametrize(("name", "digest"), [("HMAC-SHA256", "sha256"), ("HMAC-SHA512", "sha512")])
@settings(max_examples=30, deadline=None)
@given(message=st.binary(max_size=1024))
def test_hmac_matches_the_standard_library(name: str, digest: str, message: bytes) -> None:
    import hmac as std_hmac

    algorithm = resolve(name)
    key = algorithm.generate()
    tag = algorithm.sign(key, message)
    assert tag == std_hmac.new(key, message, digest).digest()
    algorithm.verify(key, message, tag)


@pytest.mark.parametrize("name", ["HMAC-SHA256", "HMAC-SHA512"])
def test_hmac_rejects_short_material(name: str) -> None:
    with pytest.raises(AlgorithmError):
        resolve(name).sign(b"k" * 16, b"message")


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_public_key_loads_and_verifies(
    name: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    key, other_key = materials[name]
    spki = algorithm.public_key(key)
    assert spki is not None
    assert spki != algorithm.public_key(other_key)
    public = serialization.load_der_public_key(spki)
    signature = algorithm.sign(key, b"payload")
    if name == "Ed25519":
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, b"payload")
    elif name.startswith("ECDSA-"):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert (
            public.curve.name == {"ECDSA-P256": "secp256r1", "ECDSA-secp256k1": "secp256k1"}[name]
        )
        public.verify(signature, b"payload", ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == resolve(name).default_key_bits
        public.verify(
            signature,
            b"payload",
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_material_is_pkcs8_der(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    key = serialization.load_der_private_key(materials[name][0], password=None)
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == resolve(name).public_key(materials[name][0])


@pytest.mark.parametrize("name", ["AES-256-GCM", "ChaCha20-Poly1305", "HMAC-SHA256"])
def test_symmetric_has_no_public_key(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    assert resolve(name).public_key(materials[name][0]) is None


def test_ed25519_is_deterministic_and_64_bytes(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    algorithm = resolve("Ed25519")
    key = materials["Ed25519"][0]
    assert algorithm.sign(key, b"m") == algorithm.sign(key, b"m")
    assert len(algorithm.sign(key, b"m")) == 64


def test_ecdsa_signatures_are_der(materials: dict[str, tuple[bytes, bytes]]) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signature = resolve("ECDSA-P256").sign(materials["ECDSA-P256"][0], b"m")
    r, s = decode_dss_signature(signature)
    assert 0 < r and 0 < s


def test_rsa_pss_is_randomized(materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve("RSA-2048")
    key = materials["RSA-2048"][0]
    assert algorithm.sign(key, b"m") != algorithm.sign(key, b"m")


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("Ed25519", "ECDSA-P256"),
        ("ECDSA-P256", "RSA-2048"),
        ("RSA-2048", "Ed25519"),
        # Same key type, other parameters: the curve or modulus size must match too.
        ("ECDSA-P256", "ECDSA-secp256k1"),
        ("ECDSA-secp256k1", "ECDSA-P256"),
        ("RSA-2048", "RSA-4096"),
        ("RSA-4096", "RSA-2048"),
        ("ECDSA-secp256k1", "ML-DSA-65"),
        ("RSA-4096", "Ed25519"),
    ],
)
def test_material_of_another_algorithm_is_refused(
    name: str, other: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    for bad in (materials[other][0], b"", b"not a key at all"):
        with pytest.raises(AlgorithmError, match=name) as info:
            algorithm.sign(bad, b"m")
        if bad:
            assert repr(bad)[2:-1] not in str(info.value)


def test_ecdsa_refuses_another_curve() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(AlgorithmError):
        resolve("ECDSA-P256").sign(p384, b"m")


def test_rsa_refuses_another_modulus_size() -> None:
    small = rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(AlgorithmError):
        resolve("RSA-2048").sign(small, b"m")


# --- RSA encryption ---------------------------------------------------------------------------


def test_rsa_oaep_round_trip(materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve("RSA-2048")
    key, other_key = materials["RSA-2048"]
    data = algorithm.encrypt(key, b"wrapped data key", b"")
    assert len(data) == 256
    assert algorithm.decrypt(key, data, b"") == b"wrapped data key"
    # The ciphertext is standard OAEP-SHA256, decryptable by the private key directly.
    private = serialization.load_der_private_key(key, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert private.decrypt(data, oaep) == b"wrapped data key"
    with pytest.raises(DecryptionError):
        algorithm.decrypt(other_key, data, b"")
    with pytest.raises(DecryptionError):
        algorithm.decrypt(key, flip(data, 100), b"")
    with pytest.raises(DecryptionError):
        algorithm.decrypt(key, data[:-1], b"")


def test_rsa_binds_aad_as_the_oaep_label(materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve("RSA-2048")
    key = materials["RSA-2048"][0]
    data = algorithm.encrypt(key, b"x", b"context")
    assert algorithm.decrypt(key, data, b"context") == b"x"
    for wrong in (b"", b"other"):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(key, data, wrong)
    private = serialization.load_der_private_key(key, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    oaep = padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"context"
    )
    assert private.decrypt(data, oaep) == b"x"


@pytest.mark.parametrize(("name", "limit"), [("RSA-2048", 190), ("RSA-4096", 446)])
def test_rsa_plaintext_limit(
    name: str, limit: int, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    key = materials[name][0]
    assert algorithm.decrypt(key, algorithm.encrypt(key, b"x" * limit, b""), b"") == b"x" * limit
    with pytest.raises(AlgorithmError, match=str(limit)):
        algorithm.encrypt(key, b"x" * (limit + 1), b"")


def test_rsa_4096_oaep_round_trip_and_aad(materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve("RSA-4096")
    key, other_key = materials["RSA-4096"]
    data = algorithm.encrypt(key, b"wrapped data key", b"context")
    assert len(data) == 512
    assert algorithm.decrypt(key, data, b"context") == b"wrapped data key"
    for bad_key, blob, aad in (
        (other_key, data, b"context"),
        (key, data, b"other"),
        (key, flip(data, 200), b"context"),
        (key, data[:-1], b"context"),
    ):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(bad_key, blob, aad)


def test_secp256k1_interoperates_with_cryptography(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    """An ES256K signature made outside keyrotor verifies, and ours verify outside."""
    algorithm = resolve("ECDSA-secp256k1")
    key = materials["ECDSA-secp256k1"][0]
    private = serialization.load_der_private_key(key, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    algorithm.verify(key, b"m", private.sign(b"m", ec.ECDSA(hashes.SHA256())))
    private.public_key().verify(algorithm.sign(key, b"m"), b"m", ec.ECDSA(hashes.SHA256()))


def test_every_algorithm_is_an_algorithm() -> None:
    for name in canonical_names():
        assert isinstance(resolve(name), Algorithm)


def test_rsa_refuses_an_inconsistent_private_key() -> None:
    """Signing with a corrupted CRT parameter would leak the key (Bellcore): load must refuse it.

    The once-per-material check must still run for material the process has not seen.
    """
    good = rsa.generate_private_key(65537, 2048).private_numbers()
    corrupted = rsa.RSAPrivateNumbers(
        p=good.p,
        q=good.q,
        d=good.d,
        dmp1=good.dmp1 ^ 2,
        dmq1=good.dmq1,
        iqmp=good.iqmp,
        public_numbers=good.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    material = corrupted.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    algorithm = resolve("RSA-2048")
    for _ in range(2):
        with pytest.raises(AlgorithmError):
            algorithm.sign(material, b"m")
