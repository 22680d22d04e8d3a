"""The PQC policy moves a key to post-quantum algorithms one rotation at a time, and versions in
grace keep verifying what they signed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.keys import KeyService
from core.lifecycle import LifecyclePolicy, RotationReason, new_key, rotate
from core.objects import KeySpec, KeyTransitionCommit
from core.policy import PolicyError, PQCPolicy, default_policy_path, load_policies
from core.services import Services
from tests.unit.test_policy import _dump, _valid, _write

DEADLINE = datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)
BEFORE, AFTER = DEADLINE - timedelta(days=1), DEADLINE + timedelta(days=1)
POLICY = PQCPolicy(True, DEADLINE, True, ("ML-DSA-65", "Falcon-1024"), ("ML-KEM-768",))
EVERYTHING = lambda name: True  # noqa: E731


def toml_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")  # a TOML offset date-time, unquoted
    return json.dumps(value)  # booleans, strings and lists of strings read the same in TOML


@pytest.mark.parametrize(
    ("current", "at", "expected"),
    [
        ("ECDSA-P256", BEFORE, "Ed25519+ML-DSA-65"),
        ("RSA-2048", BEFORE, "Ed25519+ML-DSA-65"),
        ("Ed25519", AFTER, "ML-DSA-65"),
        ("Ed25519+ML-DSA-65", BEFORE, "Ed25519+ML-DSA-65"),  # a hybrid stays until the deadline
        ("Ed25519+ML-DSA-65", AFTER, "ML-DSA-65"),
        ("X25519+ML-KEM-768", AFTER, "ML-KEM-768"),
        ("ML-DSA-65", AFTER, "ML-DSA-65"),  # post-quantum already
        ("Falcon-512", BEFORE, "Falcon-512"),
        ("AES-256-GCM", AFTER, "AES-256-GCM"),  # symmetric: not quantum-vulnerable
        ("HMAC-SHA256", AFTER, "HMAC-SHA256"),
    ],
)
def test_next_algorithm(current: str, at: datetime, expected: str) -> None:
    assert POLICY.next_algorithm(current, at, EVERYTHING) == expected


def test_disabled_or_without_hybrids_or_unsupported() -> None:
    off = PQCPolicy(False, DEADLINE, True, ("ML-DSA-65",), ("ML-KEM-768",))
    assert off.next_algorithm("ECDSA-P256", AFTER, EVERYTHING) == "ECDSA-P256"
    direct = PQCPolicy(True, DEADLINE, False, ("ML-DSA-65",), ("ML-KEM-768",))
    assert direct.next_algorithm("ECDSA-P256", BEFORE, EVERYTHING) == "ML-DSA-65"
    # the provider's holdings decide: the next preferred one, or none and the key stays
    assert POLICY.next_algorithm("Ed25519", AFTER, lambda n: n == "Falcon-1024") == "Falcon-1024"
    assert POLICY.next_algorithm("ECDSA-P256", BEFORE, lambda n: n == "ECDSA-P256") == (
        "ECDSA-P256"
    )


def test_the_shipped_policy_reads_the_reference_values_and_is_off() -> None:
    pqc = load_policies(default_policy_path()).pqc
    assert pqc == PQCPolicy(False, DEADLINE, True, ("ML-DSA-65", "Falcon-1024"), pqc.encryption)
    assert pqc.encryption == ("ML-KEM-768", "AES-256-GCM")


@pytest.mark.parametrize(
    ("table", "field", "reason"),
    [
        ({"migration_deadline": "2030-12-31"}, "migration_deadline", "must be a date and time"),
        ({"preferred_signing": ["AES-256-GCM"]}, "preferred_signing[0]", "is a symmetric"),
        ({"preferred_signing": []}, "preferred_signing", "must be a non-empty list"),
        ({"preferred_encryption": ["Dilithium9"]}, "preferred_encryption[0]", "unknown"),
        ({"hybrid_mode": "yes"}, "hybrid_mode", "must be true or false"),
    ],
)
def test_bad_pqc_policy(tmp_path: Path, table: dict[str, object], field: str, reason: str) -> None:
    pqc = {
        "enabled": True,
        "migration_deadline": DEADLINE,
        "hybrid_mode": True,
        "preferred_signing": ["ML-DSA-65"],
        "preferred_encryption": ["ML-KEM-768"],
    } | table
    lines = ["[pqc_policy]"] + [f"{k} = {toml_value(v)}" for k, v in pqc.items()]
    with pytest.raises(PolicyError) as info:
        load_policies(_write(tmp_path, _dump(_valid()) + "\n".join(lines) + "\n"))
    assert info.value.field == f"pqc_policy.{field}"
    assert reason in info.value.reason


def test_rotations_move_a_signing_key_from_ecdsa_to_hybrid_to_ml_dsa(services: Services) -> None:
    keys = KeyService(services.store, services.providers, pqc=POLICY)  # shipped: off
    spec = KeySpec("key_pqcmigration00001", "dev", "signing", "ECDSA-P256", "local", 256)
    wid = f"keyrotor/key/dev/{spec.key_id}"
    lifecycle_policy = LifecyclePolicy(30 * 86400, 86400, 400 * 86400, 7 * 86400)
    now = datetime.now(UTC)
    lc = new_key(lifecycle_policy, now)
    keys.commit_transition(
        KeyTransitionCommit(f"{wid}/1", spec, lc, "key.created", "keyCreated", now, new_version=1)
    )
    signed = {1: keys.sign(spec.key_id, b"release 1")}
    for n, at in ((2, BEFORE), (3, AFTER)):
        # the rotation's time is what decides; the lifecycle's own clock may differ
        lc = rotate(lc, now + timedelta(hours=n), RotationReason.MANUAL)
        keys.commit_transition(
            KeyTransitionCommit(
                f"{wid}/{n}", spec, lc, "key.rotated", "keyRotated", at, new_version=n
            )
        )
        signed[n] = keys.sign(spec.key_id, f"release {n}".encode())
    key, versions = keys.get(spec.key_id)
    assert [(v.number, v.algorithm) for v in versions] == [
        (1, "ECDSA-P256"),
        (2, "Ed25519+ML-DSA-65"),
        (3, "ML-DSA-65"),
    ]
    assert key.algorithm == "ML-DSA-65"
    assert [s.version for s in signed.values()] == [1, 2, 3]
    # version 2 is in grace: what it signed still verifies, under its own algorithm
    assert keys.verify(spec.key_id, b"release 2", str(signed[2].value)).version == 2
    assert keys.verify(spec.key_id, b"release 3", str(signed[3].value)).version == 3
