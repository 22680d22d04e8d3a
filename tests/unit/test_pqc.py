"""Post-quantum and hybrid algorithms: round trips, tampering, wrong keys, encodings, interop."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from core.algorithms import (
    AlgorithmError,
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
    container,
    resolve,
)

ML_DSA = ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"]
FALCON = ["Falcon-512", "Falcon-1024"]
ML_KEM = ["ML-KEM-512", "ML-KEM-768", "ML-KEM-1024"]
SIGNERS = [*ML_DSA, *FALCON, "Ed25519+ML-DSA-65"]
KEMS = [*ML_KEM, "X25519+ML-KEM-768"]
ALL = [*SIGNERS, *KEMS]

COMPOSITE = "Ed25519+ML-DSA-65"
HYBRID_KEM = "X25519+ML-KEM-768"
COMPOSITE_LABEL = b"keyrotor/composite-signature/v1\x00Ed25519+ML-DSA-65\x00"


def pqclean(module: str) -> ModuleType:
    """A pqcrypto module, typed as a plain module (the package ships no type information)."""
    return importlib.import_module(f"pqcrypto.{module}")


@pytest.fixture(scope="module")
def materials() -> dict[str, tuple[bytes, bytes]]:
    """Two independent materials per algorithm."""
    return {name: (resolve(name).generate(), resolve(name).generate()) for name in ALL}


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# --- names and metadata -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("Dilithium2", "ML-DSA-44"),
        ("dilithium2", "ML-DSA-44"),
        ("Dilithium3", "ML-DSA-65"),
        ("DILITHIUM3", "ML-DSA-65"),
        ("Dilithium5", "ML-DSA-87"),
        ("ml-dsa-87", "ML-DSA-87"),
        ("Falcon512", "Falcon-512"),
        ("falcon-512", "Falcon-512"),
        ("Falcon1024", "Falcon-1024"),
        ("FALCON-1024", "Falcon-1024"),
        ("Kyber512", "ML-KEM-512"),
        ("kyber768", "ML-KEM-768"),
        ("KYBER1024", "ML-KEM-1024"),
        ("ml-kem-768", "ML-KEM-768"),
        ("ed25519+ml-dsa-65", "Ed25519+ML-DSA-65"),
        ("Ed25519+Dilithium3", "Ed25519+ML-DSA-65"),
        ("x25519+ml-kem-768", "X25519+ML-KEM-768"),
        ("X25519+Kyber768", "X25519+ML-KEM-768"),
        ("x25519mlkem768", "X25519+ML-KEM-768"),
    ],
)
def test_aliases_resolve_case_insensitively(alias: str, canonical: str) -> None:
    assert resolve(alias) is resolve(canonical)
    assert resolve(alias).name == canonical


def test_bare_family_names_are_not_guessed() -> None:
    """ "Falcon" or "Kyber" alone could mean several sizes: they must not pick one silently."""
    for name in ("Falcon", "Kyber", "Dilithium", "ML-DSA", "ML-KEM"):
        with pytest.raises(AlgorithmError):
            resolve(name)


@pytest.mark.parametrize(
    ("name", "kind", "bits"),
    [
        ("ML-DSA-44", "signature", 128),
        ("ML-DSA-65", "signature", 192),
        ("ML-DSA-87", "signature", 256),
        ("Falcon-512", "signature", 128),
        ("Falcon-1024", "signature", 256),
        ("ML-KEM-512", "key-encapsulation", 128),
        ("ML-KEM-768", "key-encapsulation", 192),
        ("ML-KEM-1024", "key-encapsulation", 256),
        ("Ed25519+ML-DSA-65", "signature", 192),
        ("X25519+ML-KEM-768", "key-encapsulation", 192),
    ],
)
def test_metadata_and_key_bits(name: str, kind: str, bits: int) -> None:
    algorithm = resolve(name)
    assert algorithm.kind == kind
    expected = {"sign", "verify"} if kind == "signature" else {"encrypt", "decrypt"}
    assert {str(op) for op in algorithm.operations} == expected
    assert algorithm.default_key_bits == bits
    algorithm.validate_key_bits(bits)
    for other in {128, 192, 256, 512, 1024, 2048, 0} - {bits}:
        with pytest.raises(AlgorithmError, match=name.replace("+", r"\+")):
            algorithm.validate_key_bits(other)
        with pytest.raises(AlgorithmError):
            algorithm.generate(other)


def test_key_encapsulation_is_its_own_kind() -> None:
    assert AlgorithmKind.KEY_ENCAPSULATION == "key-encapsulation"
    assert resolve("ML-KEM-768").kind is AlgorithmKind.KEY_ENCAPSULATION


@pytest.mark.parametrize("name", ALL)
def test_generated_material_is_random(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    a, b = materials[name]
    assert a != b
    assert resolve(name).public_key(a) != resolve(name).public_key(b)


# --- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNERS)
def test_sign_verify_round_trip(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve(name)
    key, other_key = materials[name]
    signature = algorithm.sign(key, b"message")
    algorithm.verify(key, b"message", signature)
    algorithm.verify(key, b"", algorithm.sign(key, b""))
    with pytest.raises(InvalidSignatureError):
        algorithm.verify(key, b"messagE", signature)
    with pytest.raises(InvalidSignatureError):
        algorithm.verify(other_key, b"message", signature)
    for index in (0, 1, len(signature) // 2, len(signature) - 1):
        with pytest.raises(InvalidSignatureError):
            algorithm.verify(key, b"message", flip(signature, index))
    for garbage in (b"", b"\0", signature[:-1], signature + b"\0", b"\0" * len(signature)):
        with pytest.raises(InvalidSignatureError):
            algorithm.verify(key, b"message", garbage)


@pytest.mark.parametrize(
    ("name", "max_bytes", "fixed"),
    [
        ("ML-DSA-44", 2420, True),
        ("ML-DSA-65", 3309, True),
        ("ML-DSA-87", 4627, True),
        # Falcon's compressed signatures vary in length, up to the PQClean bound.
        ("Falcon-512", 752, False),
        ("Falcon-1024", 1462, False),
        ("Ed25519+ML-DSA-65", 1 + 64 + 3309, True),
    ],
)
def test_signature_sizes(
    name: str, max_bytes: int, fixed: bool, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    signature = resolve(name).sign(materials[name][0], b"m")
    assert len(signature) == max_bytes if fixed else 0 < len(signature) <= max_bytes


@pytest.mark.parametrize("name", [*ML_DSA, *FALCON, COMPOSITE])
def test_signatures_are_randomized(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve(name)
    key = materials[name][0]
    first, second = algorithm.sign(key, b"m"), algorithm.sign(key, b"m")
    assert first != second
    algorithm.verify(key, b"m", first)
    algorithm.verify(key, b"m", second)


@pytest.mark.parametrize(
    ("name", "public_bytes"), [("ML-DSA-44", 1312), ("ML-DSA-65", 1952), ("ML-DSA-87", 2592)]
)
def test_ml_dsa_encodings_are_standard(
    name: str, public_bytes: int, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    """PKCS#8 material and SubjectPublicKeyInfo public keys that cryptography reads back."""
    algorithm = resolve(name)
    key = materials[name][0]
    private = serialization.load_der_private_key(key, password=None)
    key_types = {
        "ML-DSA-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
        "ML-DSA-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
        "ML-DSA-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
    }[name]
    assert isinstance(private, key_types[0])
    assert len(private.private_bytes_raw()) == 32  # the seed form
    spki = algorithm.public_key(key)
    public = serialization.load_der_public_key(spki)
    assert isinstance(public, key_types[1])
    assert len(public.public_bytes_raw()) == public_bytes
    assert spki == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public.verify(algorithm.sign(key, b"payload"), b"payload")
    with pytest.raises(InvalidSignature):
        public.verify(algorithm.sign(materials[name][1], b"payload"), b"payload")


@pytest.mark.parametrize(
    ("name", "module"),
    [("ML-DSA-44", "ml_dsa_44"), ("ML-DSA-65", "ml_dsa_65"), ("ML-DSA-87", "ml_dsa_87")],
)
def test_ml_dsa_implementations_verify_each_other(
    name: str, module: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    """cryptography's (OpenSSL) ML-DSA and pqcrypto's (PQClean) accept each other's signatures.

    Both are FIPS 204 pure ML-DSA with an empty context; a mismatch (e.g. one still round-3
    Dilithium) would fail in both directions.
    """
    pq = pqclean(f"sign.{module}")
    algorithm = resolve(name)
    key = materials[name][0]
    public = serialization.load_der_public_key(algorithm.public_key(key))
    assert isinstance(
        public, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey
    )
    raw = public.public_bytes_raw()

    # keyrotor (cryptography) signs, PQClean verifies.
    signature = algorithm.sign(key, b"cross-implementation")
    assert pq.verify(raw, b"cross-implementation", signature) is True
    assert pq.verify(raw, b"cross-implementatioN", signature) is False
    assert pq.verify(raw, b"cross-implementation", flip(signature, 100)) is False

    # PQClean signs, cryptography verifies.
    pq_public, pq_secret = pq.generate_keypair()
    pq_signature = pq.sign(pq_secret, b"the other way")
    public_type = {
        "ML-DSA-44": mldsa.MLDSA44PublicKey,
        "ML-DSA-65": mldsa.MLDSA65PublicKey,
        "ML-DSA-87": mldsa.MLDSA87PublicKey,
    }[name]
    loaded = public_type.from_public_bytes(pq_public)
    loaded.verify(pq_signature, b"the other way")
    with pytest.raises(InvalidSignature):
        loaded.verify(pq_signature, b"the other waY")
    with pytest.raises(InvalidSignature):
        public.verify(pq_signature, b"the other way")  # another key


@pytest.mark.parametrize(
    ("name", "module", "public_bytes"),
    [("Falcon-512", "falcon_512", 897), ("Falcon-1024", "falcon_1024", 1793)],
)
def test_falcon_material_and_raw_public_key(
    name: str, module: str, public_bytes: int, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    """Material is the documented container; the public key is raw and PQClean verifies with it."""
    algorithm = resolve(name)
    key = materials[name][0]
    public, secret = container.unpack(container.PRIVATE_MAGIC, name, key, 2, "private key")
    assert key.startswith(b"KRKM\x01" + bytes([len(name)]) + name.encode())
    assert algorithm.public_key(key) == public
    assert len(public) == public_bytes
    pq = pqclean(f"sign.{module}")
    assert len(secret) == pq.SECRET_KEY_SIZE
    assert pq.verify(public, b"m", algorithm.sign(key, b"m")) is True
    algorithm.verify(key, b"m", pq.sign(secret, b"m"))


# --- the composite signature ------------------------------------------------------------------


def test_composite_halves_are_the_component_signatures(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    """Each half verifies with its component public key over LABEL || message only."""
    algorithm = resolve(COMPOSITE)
    key = materials[COMPOSITE][0]
    signature = algorithm.sign(key, b"message")
    assert signature[0] == 1
    ed_half, ml_half = signature[1:65], signature[65:]
    ed_spki, ml_spki = container.unpack(
        container.PUBLIC_MAGIC, COMPOSITE, algorithm.public_key(key), 2, "public key"
    )
    ed_public = serialization.load_der_public_key(ed_spki)
    ml_public = serialization.load_der_public_key(ml_spki)
    assert isinstance(ed_public, ed25519.Ed25519PublicKey)
    assert isinstance(ml_public, mldsa.MLDSA65PublicKey)
    ed_public.verify(ed_half, COMPOSITE_LABEL + b"message")
    ml_public.verify(ml_half, COMPOSITE_LABEL + b"message")
    # Stripped of the other half, neither is a signature of the bare message under its own
    # algorithm: the label keeps a composite from being downgraded to one algorithm.
    with pytest.raises(InvalidSignature):
        ed_public.verify(ed_half, b"message")
    with pytest.raises(InvalidSignature):
        ml_public.verify(ml_half, b"message")
    ed_material, ml_material = container.unpack(
        container.PRIVATE_MAGIC, COMPOSITE, key, 2, "private key"
    )
    with pytest.raises(InvalidSignatureError):
        resolve("Ed25519").verify(ed_material, b"message", ed_half)
    with pytest.raises(InvalidSignatureError):
        resolve("ML-DSA-65").verify(ml_material, b"message", ml_half)


def test_composite_needs_both_halves(materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve(COMPOSITE)
    key, other_key = materials[COMPOSITE]
    a = algorithm.sign(key, b"one")
    b = algorithm.sign(key, b"two")
    foreign = algorithm.sign(other_key, b"one")
    version, ed_a, ml_a = a[:1], a[1:65], a[65:]
    forged = [
        version + flip(ed_a, 10) + ml_a,  # classical half altered
        version + ed_a + flip(ml_a, 10),  # post-quantum half altered
        version + ml_a + ed_a,  # halves swapped in place
        version + b[1:65] + ml_a,  # classical half from another message
        version + ed_a + b[65:],  # post-quantum half from another message
        version + foreign[1:65] + ml_a,  # classical half from another key
        version + ed_a + foreign[65:],  # post-quantum half from another key
        b"\x02" + ed_a + ml_a,  # unknown format version
        version + ed_a,  # one half only
        version + ml_a,
    ]
    for signature in forged:
        for message in (b"one", b"two"):
            with pytest.raises(InvalidSignatureError):
                algorithm.verify(key, message, signature)
    algorithm.verify(key, b"one", a)


def test_composite_material_and_public_key_format(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    key = materials[COMPOSITE][0]
    ed_material, ml_material = container.unpack(
        container.PRIVATE_MAGIC, COMPOSITE, key, 2, "private key"
    )
    assert isinstance(
        serialization.load_der_private_key(ed_material, None), ed25519.Ed25519PrivateKey
    )
    assert isinstance(
        serialization.load_der_private_key(ml_material, None), mldsa.MLDSA65PrivateKey
    )
    public = resolve(COMPOSITE).public_key(key)
    assert public.startswith(b"KRPK\x01")
    assert container.unpack(container.PUBLIC_MAGIC, COMPOSITE, public, 2, "public key") == [
        resolve("Ed25519").public_key(ed_material),
        resolve("ML-DSA-65").public_key(ml_material),
    ]


# --- key encapsulation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEMS)
@pytest.mark.parametrize("plaintext", [b"", b"k" * 32, bytes(range(256)) * 64])
def test_kem_round_trip(
    name: str, plaintext: bytes, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    key = materials[name][0]
    data = algorithm.encrypt(key, plaintext, b"aad")
    assert algorithm.decrypt(key, data, b"aad") == plaintext
    # A fresh encapsulation per message: same input, different output.
    assert algorithm.encrypt(key, plaintext, b"aad") != data


@pytest.mark.parametrize(
    ("name", "enc_bytes"),
    [("ML-KEM-512", 768), ("ML-KEM-768", 1088), ("ML-KEM-1024", 1568), (HYBRID_KEM, 32 + 1088)],
)
def test_kem_ciphertext_layout(
    name: str, enc_bytes: int, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    """version || name length || name || enc || AES-GCM ciphertext || tag."""
    data = resolve(name).encrypt(materials[name][0], b"hello", b"")
    header = b"\x01" + bytes([len(name)]) + name.encode()
    assert data.startswith(header)
    assert len(data) == len(header) + enc_bytes + len(b"hello") + 16
    assert b"hello" not in data


@pytest.mark.parametrize("name", KEMS)
def test_kem_tampering_fails(name: str, materials: dict[str, tuple[bytes, bytes]]) -> None:
    algorithm = resolve(name)
    key, other_key = materials[name]
    data = algorithm.encrypt(key, b"attack at dawn", b"ctx")
    header = 2 + len(name)
    # The header, the start and end of enc, the sealed body and the tag are all bound.
    for index in (0, 1, 2, header, header + 1, len(data) - 17, len(data) - 20, len(data) - 1):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(key, flip(data, index), b"ctx")
    for truncated in (b"", data[:header], data[: header + 10], data[:-1], data[:-16]):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(key, truncated, b"ctx")
    with pytest.raises(DecryptionError):
        algorithm.decrypt(key, data + b"\0", b"ctx")
    for aad in (b"", b"ctX", b"ctx\0"):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(key, data, aad)
    with pytest.raises(DecryptionError):
        algorithm.decrypt(other_key, data, b"ctx")


def test_kem_ciphertext_of_another_algorithm_fails(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    data = resolve("ML-KEM-768").encrypt(materials["ML-KEM-768"][0], b"x", b"")
    for name in ("ML-KEM-512", "ML-KEM-1024", HYBRID_KEM):
        with pytest.raises(DecryptionError):
            resolve(name).decrypt(materials[name][0], data, b"")


@pytest.mark.parametrize(("name", "public_bytes"), [("ML-KEM-768", 1184), ("ML-KEM-1024", 1568)])
def test_ml_kem_encodings_are_standard(
    name: str, public_bytes: int, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    key = materials[name][0]
    private = serialization.load_der_private_key(key, password=None)
    assert isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey)
    assert len(private.private_bytes_raw()) == 64  # the seed form
    public = serialization.load_der_public_key(resolve(name).public_key(key))
    assert isinstance(public, mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey)
    assert len(public.public_bytes_raw()) == public_bytes
    assert public == private.public_key()


@pytest.mark.parametrize("module", ["ml_kem_768", "ml_kem_1024"])
def test_ml_kem_interoperates_with_pqclean(
    module: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    """A PQClean encapsulation to keyrotor's (OpenSSL's) public key decapsulates to its secret."""
    name = {"ml_kem_768": "ML-KEM-768", "ml_kem_1024": "ML-KEM-1024"}[module]
    private = serialization.load_der_private_key(materials[name][0], password=None)
    assert isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey)
    ciphertext, shared = pqclean(f"kem.{module}").encrypt(private.public_key().public_bytes_raw())
    assert private.decapsulate(ciphertext) == shared


def test_ml_kem_512_material_and_raw_public_key(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    algorithm = resolve("ML-KEM-512")
    key = materials["ML-KEM-512"][0]
    public, secret = container.unpack(container.PRIVATE_MAGIC, "ML-KEM-512", key, 2, "private key")
    assert algorithm.public_key(key) == public
    assert (len(public), len(secret)) == (800, 1632)
    ciphertext, shared = pqclean("kem.ml_kem_512").encrypt(public)
    assert pqclean("kem.ml_kem_512").decrypt(secret, ciphertext) == shared


def test_ml_kem_512_refuses_mismatched_halves(materials: dict[str, tuple[bytes, bytes]]) -> None:
    """A container whose public key is not the one inside its secret key is not material."""
    a, b = materials["ML-KEM-512"]
    public_b = container.unpack(container.PRIVATE_MAGIC, "ML-KEM-512", b, 2, "private key")[0]
    secret_a = container.unpack(container.PRIVATE_MAGIC, "ML-KEM-512", a, 2, "private key")[1]
    mixed = container.pack(container.PRIVATE_MAGIC, "ML-KEM-512", [public_b, secret_a])
    with pytest.raises(AlgorithmError, match="ML-KEM-512"):
        resolve("ML-KEM-512").encrypt(mixed, b"x", b"")


# --- the hybrid KEM ---------------------------------------------------------------------------


def _hybrid_keys(material: bytes) -> tuple[x25519.X25519PrivateKey, mlkem.MLKEM768PrivateKey]:
    classical, pq = container.unpack(
        container.PRIVATE_MAGIC, HYBRID_KEM, material, 2, "private key"
    )
    x_key = serialization.load_der_private_key(classical, None)
    m_key = serialization.load_der_private_key(pq, None)
    assert isinstance(x_key, x25519.X25519PrivateKey)
    assert isinstance(m_key, mlkem.MLKEM768PrivateKey)
    return x_key, m_key


def test_hybrid_kem_public_key_format(materials: dict[str, tuple[bytes, bytes]]) -> None:
    key = materials[HYBRID_KEM][0]
    x_key, m_key = _hybrid_keys(key)
    public = resolve(HYBRID_KEM).public_key(key)
    x_spki, m_spki = container.unpack(container.PUBLIC_MAGIC, HYBRID_KEM, public, 2, "public key")
    assert serialization.load_der_public_key(x_spki) == x_key.public_key()
    assert serialization.load_der_public_key(m_spki) == m_key.public_key()


def test_hybrid_kem_needs_both_halves(materials: dict[str, tuple[bytes, bytes]]) -> None:
    """Replacing either encapsulation by another valid one (a different secret) fails.

    A valid X25519 share or ML-KEM ciphertext to the same recipient decapsulates without
    error, so only a key derived from both secrets notices the swap.
    """
    algorithm = resolve(HYBRID_KEM)
    key = materials[HYBRID_KEM][0]
    x_key, m_key = _hybrid_keys(key)
    data = algorithm.encrypt(key, b"secret", b"")
    start = 2 + len(HYBRID_KEM)
    other_share = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    _, other_ciphertext = m_key.public_key().encapsulate()
    swapped_classical = data[:start] + other_share + data[start + 32 :]
    swapped_pq = data[: start + 32] + other_ciphertext + data[start + 32 + 1088 :]
    for forged in (swapped_classical, swapped_pq):
        with pytest.raises(DecryptionError):
            algorithm.decrypt(key, forged, b"")
    # An all-zero share is a low-order point: refused rather than used as a known secret.
    zero_share = data[:start] + bytes(32) + data[start + 32 :]
    with pytest.raises(DecryptionError):
        algorithm.decrypt(key, zero_share, b"")
    assert x_key.public_key() != x25519.X25519PrivateKey.generate().public_key()


def test_hybrid_kem_material_of_the_wrong_parts_is_refused(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    composite_key = materials[COMPOSITE][0]
    ed_material, ml_material = container.unpack(
        container.PRIVATE_MAGIC, COMPOSITE, composite_key, 2, "private key"
    )
    # The right container name, but signing keys inside.
    wrong = container.pack(container.PRIVATE_MAGIC, HYBRID_KEM, [ed_material, ml_material])
    with pytest.raises(AlgorithmError, match=r"X25519\+ML-KEM-768"):
        resolve(HYBRID_KEM).encrypt(wrong, b"x", b"")


# --- bad material -----------------------------------------------------------------------------


def _bad_materials(name: str, materials: dict[str, tuple[bytes, bytes]]) -> list[bytes]:
    key = materials[name][0]
    other = {
        "ML-DSA-44": "ML-DSA-65",
        "ML-DSA-65": "ML-DSA-87",
        "ML-DSA-87": "ML-DSA-44",
        "Falcon-512": "Falcon-1024",
        "Falcon-1024": "Falcon-512",
        "ML-KEM-512": "ML-KEM-768",
        "ML-KEM-768": "ML-KEM-1024",
        "ML-KEM-1024": "ML-KEM-768",
        COMPOSITE: HYBRID_KEM,
        HYBRID_KEM: COMPOSITE,
    }[name]
    return [
        b"",
        b"not a key at all",
        materials[other][0],  # a key of a sibling algorithm
        key[:-1],
        key + b"\0",
        key[: len(key) // 2],
    ]


@pytest.mark.parametrize("name", ALL)
def test_bad_material_is_refused_without_echoing_it(
    name: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    algorithm = resolve(name)
    for bad in _bad_materials(name, materials):
        calls = [lambda bad=bad: algorithm.public_key(bad)]
        if Operation.SIGN in algorithm.operations:
            calls += [
                lambda bad=bad: algorithm.sign(bad, b"m"),
                lambda bad=bad: algorithm.verify(bad, b"m", b"\0" * 64),
            ]
        else:
            calls += [
                lambda bad=bad: algorithm.encrypt(bad, b"m", b""),
                lambda bad=bad: algorithm.decrypt(bad, b"\0" * 2048, b""),
            ]
        for call in calls:
            with pytest.raises(AlgorithmError) as info:
                call()
            message = str(info.value)
            assert name in message
            if len(bad) >= 8:
                assert repr(bad)[2:-1][:40] not in message
                assert bad[:16].hex() not in message


def test_container_rejects_malformed_input() -> None:
    good = container.pack(container.PRIVATE_MAGIC, "Falcon-512", [b"pub", b"secret"])
    assert container.unpack(container.PRIVATE_MAGIC, "Falcon-512", good, 2, "k") == [
        b"pub",
        b"secret",
    ]
    for bad in (
        good[:-1],  # truncated last part
        good + b"\0",  # trailing bytes
        b"KRPK" + good[4:],  # a public-key container
        good[:4] + b"\x02" + good[5:],  # unknown version
        container.pack(container.PRIVATE_MAGIC, "Falcon-1024", [b"pub", b"secret"]),
        container.pack(container.PRIVATE_MAGIC, "Falcon-512", [b"pub"]),  # a part missing
    ):
        with pytest.raises(AlgorithmError, match="Falcon-512"):
            container.unpack(container.PRIVATE_MAGIC, "Falcon-512", bad, 2, "k")


def test_hybrid_kem_matches_its_documented_derivation(
    materials: dict[str, tuple[bytes, bytes]],
) -> None:
    """Decrypt by hand from the documented format: both shared secrets feed the key.

    (Swapping an encapsulation also changes the KDF info, so only recomputing the key shows
    that neither secret was left out of it.)
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = materials[HYBRID_KEM][0]
    x_key, m_key = _hybrid_keys(key)
    data = resolve(HYBRID_KEM).encrypt(key, b"by hand", b"aad")
    header = b"\x01" + bytes([len(HYBRID_KEM)]) + HYBRID_KEM.encode()
    enc = data[len(header) : len(header) + 32 + 1088]
    x_secret = x_key.exchange(x25519.X25519PublicKey.from_public_bytes(enc[:32]))
    m_secret = m_key.decapsulate(enc[32:])
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=44,
        salt=None,
        info=b"keyrotor/kem-aes-256-gcm/v1\x00" + header + enc,
    ).derive(m_secret + x_secret + x_key.public_key().public_bytes_raw())
    sealed = data[len(header) + len(enc) :]
    assert AESGCM(okm[:32]).decrypt(okm[32:], sealed, b"aad") == b"by hand"


@pytest.mark.parametrize("name", ["ML-KEM-768", "ML-KEM-1024"])
def test_ml_kem_matches_its_documented_derivation(
    name: str, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = materials[name][0]
    private = serialization.load_der_private_key(key, password=None)
    assert isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey)
    data = resolve(name).encrypt(key, b"by hand", b"aad")
    header = b"\x01" + bytes([len(name)]) + name.encode()
    enc_bytes = {"ML-KEM-768": 1088, "ML-KEM-1024": 1568}[name]
    enc = data[len(header) : len(header) + enc_bytes]
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=44,
        salt=None,
        info=b"keyrotor/kem-aes-256-gcm/v1\x00" + header + enc,
    ).derive(private.decapsulate(enc))
    sealed = data[len(header) + enc_bytes :]
    assert AESGCM(okm[:32]).decrypt(okm[32:], sealed, b"aad") == b"by hand"
