"""API credentials: the `krc_` format, peppers and keyed hashes (core.credentials), and
CredentialService on a real store, driven by lifecycle commits made the way
CredentialLifecycleWorkflow makes them (core.api_credentials), on SQLite and PostgreSQL.

The store is migrated once per backend for the module; every test makes its own credentials
(fresh ids) and its own CredentialService over that store, so usage buffers and rate windows
never leak between tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import string
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from core import api_credentials, audit
from core import credentials as core_credentials
from core.api_credentials import (
    CredentialService,
    Verification,
    VerificationCode,
    WriteNeeded,
    new_credential_id,
)
from core.changes import ChangeFeed
from core.credentials import (
    PEPPER_PURPOSE,
    MalformedCredentialError,
    PepperError,
    PepperRing,
    PresentedCredential,
    format_credential,
    keyed_hash,
    new_lookup_id,
    new_secret,
    parse_credential,
)
from core.envelope import MasterKeyring, open_envelope
from core.lifecycle import (
    KeyLifecycle,
    LifecyclePolicy,
    RotationReason,
    TransitionKind,
    apply_timed,
    new_key,
    next_transition,
    prune,
    resume,
    revoke,
    rotate,
    suspend,
)
from core.objects import CredentialSpec, CredentialTransitionCommit
from core.ratelimit import RedisLimits
from core.services import ConfigurationError, Services, build_services
from core.settings import Settings
from core.store.models import AuditRecordRow, CredentialVersionRow, EventRow
from tests.fixtures.database import _admin_connection, _libpq_url
from tests.fixtures.redis_server import PrivateRedis
from tests.fixtures.temporal import TEST_MASTER_KEY, make_services

DAY = 86400
# Credentials rotate only when asked (scheduled rotation is opt-in), like the API's default.
POLICY = LifecyclePolicy(
    rotation_interval=30 * DAY,
    warning_threshold=DAY,
    max_lifetime=90 * DAY,
    grace_period=DAY,
    scheduled=False,
)
PEPPER_A_BYTES = bytes(range(32, 64))
PEPPER_B_BYTES = bytes(range(64, 96))
PEPPER_A = base64.b64encode(PEPPER_A_BYTES).decode()
PEPPER_B = base64.b64encode(PEPPER_B_BYTES).decode()
NEW_MASTER_KEY = base64.b64encode(bytes(range(100, 132))).decode()

LOOKUP_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
BASE64URL = string.ascii_letters + string.digits + "-_"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
# The documented shape (README, "API credentials"), for secret scanners.
README_PATTERN = r"krc_[a-z][a-z0-9-]*_[a-z2-7]{16}_[A-Za-z0-9_-]{49}"


def now() -> datetime:
    return datetime.now(UTC)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- core.credentials: format, parse, ids, secrets --------------------------------------------

environments = st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True)
lookup_ids = st.text(alphabet=LOOKUP_ALPHABET, min_size=16, max_size=16)
secrets_ = st.binary(min_size=32, max_size=32).map(b64url)
credentials_ = st.builds(format_credential, environments, lookup_ids, secrets_)


def base62_value(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 62 + BASE62.index(ch)
    return value


def test_format_has_the_documented_shape_and_a_crc32_checksum() -> None:
    lookup, secret = "abcdefghijklmnop", b64url(bytes(32))
    text = format_credential("dev", lookup, secret)
    body = f"krc_dev_{lookup}_{secret}"
    assert text.startswith(body)
    assert len(text) == len(body) + 6
    assert re.fullmatch(README_PATTERN, text) is not None
    # the last six characters are CRC32(body) in base62, most significant digit first
    assert base62_value(text[-6:]) == zlib.crc32(body.encode())


@settings(max_examples=50, deadline=None)
@given(environment=environments, lookup_id=lookup_ids, secret=secrets_)
def test_format_then_parse_gives_back_environment_lookup_id_and_secret(
    environment: str, lookup_id: str, secret: str
) -> None:
    parsed = parse_credential(format_credential(environment, lookup_id, secret))
    assert parsed == PresentedCredential(environment, lookup_id, secret)
    assert (parsed.environment, parsed.lookup_id, parsed.secret) == (
        environment,
        lookup_id,
        secret,
    )


def assert_rejected(text: str, secret: str) -> None:
    with pytest.raises(MalformedCredentialError) as caught:
        parse_credential(text)
    assert secret not in str(caught.value)


@settings(max_examples=75, deadline=None)
@given(
    environment=environments,
    lookup_id=lookup_ids,
    secret=secrets_,
    data=st.data(),
)
def test_every_single_character_substitution_is_rejected(
    environment: str, lookup_id: str, secret: str, data: st.DataObject
) -> None:
    text = format_credential(environment, lookup_id, secret)
    i = data.draw(st.integers(0, len(text) - 1), label="position")
    replacement = data.draw(
        st.one_of(st.sampled_from(BASE64URL), st.characters()).filter(lambda c: c != text[i]),
        label="replacement",
    )
    assert_rejected(text[:i] + replacement + text[i + 1 :], secret)


@settings(max_examples=75, deadline=None)
@given(credential=credentials_)
def test_every_single_character_deletion_is_rejected(credential: str) -> None:
    secret = parse_credential(credential).secret
    for i in range(len(credential)):
        assert_rejected(credential[:i] + credential[i + 1 :], secret)


@settings(max_examples=75, deadline=None)
@given(credential=credentials_)
def test_every_adjacent_transposition_is_rejected(credential: str) -> None:
    secret = parse_credential(credential).secret
    swapped = 0
    for i in range(len(credential) - 1):
        a, b = credential[i], credential[i + 1]
        if a != b:
            assert_rejected(credential[:i] + b + a + credential[i + 2 :], secret)
            swapped += 1
    assert swapped > 0


def test_every_substitution_of_one_credential_is_rejected_exhaustively() -> None:
    text = format_credential("staging-eu", new_lookup_id(), new_secret())
    tried = 0
    for i, original in enumerate(text):
        for replacement in BASE64URL + "+/=. \n\u00e9":
            if replacement != original:
                with pytest.raises(MalformedCredentialError):
                    parse_credential(text[:i] + replacement + text[i + 1 :])
                tried += 1
    assert tried == len(text) * (len(BASE64URL) + 7) - len(text)


def test_a_typo_is_reported_as_a_checksum_error_and_a_bad_shape_as_a_shape_error() -> None:
    secret = "A" * 43
    good = format_credential("dev", "abcdefghijklmnop", secret)
    i = len(good) - 10  # in the secret: the shape still holds
    typo = good[:i] + "B" + good[i + 1 :]
    with pytest.raises(MalformedCredentialError, match="checksum"):
        parse_credential(typo)
    # well-formed checksums over bodies of the wrong shape: refused for their shape
    bad_shapes = [
        format_credential("Dev", "abcdefghijklmnop", secret),  # upper case environment
        format_credential("1dev", "abcdefghijklmnop", secret),  # starts with a digit
        format_credential("e" * 33, "abcdefghijklmnop", secret),  # 33 characters
        format_credential("dev_eu", "abcdefghijklmnop", secret),
        format_credential("dev", "abcdefghijklmno1", secret),  # '1' is not base32
        format_credential("dev", "abcdefghijklmnopq", secret),  # 17 characters
        format_credential("dev", "abcdefghijklmnop", secret + "A"),
        format_credential("dev", "abcdefghijklmnop", secret[:-1]),
        format_credential("dev", "abcdefghijklmnop", secret[:-1] + "="),
    ]
    for text in bad_shapes:
        with pytest.raises(MalformedCredentialError, match="not a keyrotor"):
            parse_credential(text)
    for text in ["", "krc_", good.upper(), good.replace("krc_", "kra_"), " " + good, good + "\n"]:
        with pytest.raises(MalformedCredentialError, match="not a keyrotor"):
            parse_credential(text)
    # an environment of 32 characters is the longest allowed
    assert parse_credential(format_credential("e" * 32, "abcdefghijklmnop", secret)).secret == (
        secret
    )


@settings(max_examples=50, deadline=None)
@given(environment=environments, lookup_id=lookup_ids, secret=secrets_)
def test_the_repr_of_a_presented_credential_never_contains_its_secret(
    environment: str, lookup_id: str, secret: str
) -> None:
    presented = parse_credential(format_credential(environment, lookup_id, secret))
    for shown in (
        repr(presented),
        str(presented),
        f"{presented}",
        f"{presented!r}",
        repr([presented]),
    ):
        assert secret not in shown
        assert lookup_id in shown  # the public part is still there to help debugging


def test_lookup_ids_are_16_random_base32_characters() -> None:
    ids = [new_lookup_id() for _ in range(300)]
    assert all(len(i) == 16 and set(i) <= set(LOOKUP_ALPHABET) for i in ids)
    assert len(set(ids)) == len(ids)
    # 4800 characters: every one of the 32 letters shows up (missing one: p < 1e-60)
    assert set("".join(ids)) == set(LOOKUP_ALPHABET)


def test_secrets_are_32_random_bytes_in_unpadded_base64url() -> None:
    made = [new_secret() for _ in range(300)]
    assert len(set(made)) == len(made)
    for secret in made:
        assert len(secret) == 43 and set(secret) <= set(BASE64URL)
        assert len(base64.urlsafe_b64decode(secret + "=")) == 32
        text = format_credential("dev", new_lookup_id(), secret)
        assert parse_credential(text).secret == secret
    assert set("".join(made)) == set(BASE64URL)


# --- core.credentials: peppers and keyed hashes ------------------------------------------------


def pepper_id(pepper: bytes) -> str:
    return "pp-" + hashlib.sha256(b"keyrotor pepper id\0" + pepper).hexdigest()[:16]


def hkdf_pepper(master: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"keyrotor/" + PEPPER_PURPOSE.encode(),
    )
    return hkdf.derive(master)


@pytest.mark.parametrize("unset", [None, ""])
def test_an_unset_pepper_is_derived_from_every_master_key(unset: str | None) -> None:
    keyring = MasterKeyring.parse(f"{NEW_MASTER_KEY},{TEST_MASTER_KEY}")
    ring = PepperRing.from_setting(unset, keyring)
    assert ring.ids() == keyring.ids()
    assert ring.current_id == keyring.current_id == keyring.ids()[0]
    new_master, old_master = base64.b64decode(NEW_MASTER_KEY), base64.b64decode(TEST_MASTER_KEY)
    assert ring.current == hkdf_pepper(new_master)
    assert ring.get(keyring.ids()[1]) == hkdf_pepper(old_master)
    assert hkdf_pepper(new_master) not in (new_master, old_master, hkdf_pepper(old_master))


def test_explicit_peppers_are_named_by_a_hash_and_the_first_is_current() -> None:
    keyring = MasterKeyring.parse(TEST_MASTER_KEY)
    ring = PepperRing.from_setting(f"{PEPPER_B},{PEPPER_A}", keyring)
    # the derived peppers follow, verify-only: hashes made before the setting keep verifying
    assert ring.ids() == [pepper_id(PEPPER_B_BYTES), pepper_id(PEPPER_A_BYTES), *keyring.ids()]
    assert all(i.startswith("pp-") and len(i) == 19 for i in ring.ids()[:2])
    assert ring.current_id == pepper_id(PEPPER_B_BYTES)
    assert ring.current == PEPPER_B_BYTES
    assert ring.get(pepper_id(PEPPER_A_BYTES)) == PEPPER_A_BYTES
    assert ring.get(keyring.current_id) == keyring.derive("credential-pepper/v1")
    assert ring.get("pp-0000000000000000") is None
    # the same pepper has the same id in any spelling, so stored hashes find it after a restart
    spelled = f" {b64url(PEPPER_B_BYTES)} ,{PEPPER_A.rstrip('=')}\n"
    assert PepperRing.from_setting(spelled, keyring).ids() == ring.ids()
    shown = repr(ring)
    for pepper in (PEPPER_A, PEPPER_B, b64url(PEPPER_A_BYTES), PEPPER_A_BYTES.hex()):
        assert pepper[:8] not in shown
    with pytest.raises(PepperError):
        PepperRing([])


def assert_names_no_part_of(message: str, values: Sequence[str]) -> None:
    for value in values:
        stripped = value.strip()
        for n in range(0, max(len(stripped) - 5, 0)):
            assert stripped[n : n + 6] not in message, (stripped[n : n + 6], message)


SHORT = base64.b64encode(b"\x8f" * 16).decode()
LONG = base64.b64encode(b"\xc3" * 33).decode()


@pytest.mark.parametrize(
    ("setting", "bad", "message"),
    [
        (
            f"{PEPPER_A},QmFkIHZhbHVlIQ!!,{PEPPER_B}",
            "QmFkIHZhbHVlIQ!!",
            "2 of 3 is not valid base64",
        ),
        (f"{SHORT},{PEPPER_A}", SHORT, "1 of 2 decodes to 16 bytes, expected 32"),
        (f"{PEPPER_B},{LONG}", LONG, "2 of 2 decodes to 33 bytes, expected 32"),
        (f"{PEPPER_A},", "", "2 of 2 decodes to 0 bytes, expected 32"),
        (
            "s\u00e9cr\u00e9t-v\u00e4lue-\u00fc\u00df",
            "s\u00e9cr\u00e9t-v\u00e4lue-\u00fc\u00df",
            "1 of 1 is not valid base64",
        ),
    ],
)
def test_a_bad_pepper_is_named_by_its_position_never_by_its_value(
    setting: str, bad: str, message: str
) -> None:
    keyring = MasterKeyring.parse(TEST_MASTER_KEY)
    with pytest.raises(PepperError) as caught:
        PepperRing.from_setting(setting, keyring)
    text = str(caught.value)
    assert text == f"credential pepper {message}"
    assert_names_no_part_of(text, [bad, PEPPER_A, PEPPER_B])


def settings_with_pepper(data_dir: Path, pepper: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url="",
        master_key=SecretStr(TEST_MASTER_KEY),
        credential_pepper=SecretStr(pepper),
    )


def test_the_process_takes_its_peppers_from_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        build_services(settings_with_pepper(tmp_path / "bad", f"{PEPPER_A},{SHORT}"))
    assert str(refused.value) == (
        "KEYROTOR_CREDENTIAL_PEPPER: credential pepper 2 of 2 decodes to 16 bytes, expected 32"
    )
    assert_names_no_part_of(str(refused.value), [SHORT, PEPPER_A])

    services = build_services(settings_with_pepper(tmp_path / "good", f"{PEPPER_B},{PEPPER_A}"))
    try:
        cred = create(services.credentials)
        assert services.credentials.verify(cred.secret(1)).valid
        assert cred.rows()[1].pepper_id == pepper_id(PEPPER_B_BYTES)
    finally:
        services.close()


def test_keyed_hash_is_hmac_sha256_of_the_salt_then_the_secret() -> None:
    # RFC 4231, test case 2: HMAC-SHA256(key="Jefe", data="what do ya want for nothing?")
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert keyed_hash(b"Jefe", b"what do ya ", "want for nothing?").hex() == expected
    salt, secret = bytes(16), new_secret()
    base = keyed_hash(PEPPER_A_BYTES, salt, secret)
    assert len(base) == 32
    assert keyed_hash(PEPPER_A_BYTES, salt, secret) == base
    assert keyed_hash(PEPPER_B_BYTES, salt, secret) != base
    assert keyed_hash(PEPPER_A_BYTES, b"\x01" + salt[1:], secret) != base
    assert keyed_hash(PEPPER_A_BYTES, salt, secret[:-1] + "!") != base
    assert keyed_hash(PEPPER_A_BYTES, salt, "\u00e9") == hmac.digest(
        PEPPER_A_BYTES, salt + "\u00e9".encode(), "sha256"
    )


# --- core.api_credentials: CredentialService on a real store -----------------------------------


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def shared_services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """Services as `make_services` builds them, on each backend, migrated once per module."""
    data_dir = tmp_path_factory.mktemp("api-credentials")
    if request.param == "sqlite":
        services = make_services(data_dir)
        yield services
        services.close()
        return
    server: str = request.getfixturevalue("postgres_server")
    name = f"keyrotor_t_{secrets.token_hex(6)}"
    with _admin_connection() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        services = make_services(data_dir, _libpq_url(server, database=name))
        yield services
        services.close()
    finally:
        with _admin_connection() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def services(shared_services: Services) -> Services:
    return shared_services


def service_with(services: Services, peppers: PepperRing | None = None) -> CredentialService:
    """A CredentialService over the test store, wired as `build_services` wires it."""
    ring = peppers or PepperRing.from_setting(None, services.keyring)
    return CredentialService(services.store, services.keyring, ring)


@pytest.fixture
def svc(services: Services) -> CredentialService:
    return service_with(services)


@pytest.fixture
def redis_limits(redis_url: str, redis_prefix: str) -> Iterator[Callable[[], RedisLimits]]:
    """Makes `RedisLimits` on the test Redis, under the test's own key prefix."""
    made: list[RedisLimits] = []

    def make() -> RedisLimits:
        made.append(RedisLimits(redis_url, prefix=redis_prefix))
        return made[-1]

    yield make
    for limits in made:
        limits.close()


@dataclass
class UsageBackend:
    """Where services count usage limits: in the store, or in Redis (`KEYROTOR_REDIS_URL`)."""

    name: str
    make: Callable[[], CredentialService]  # one more API process's service, on the same store


@pytest.fixture(params=["database", "redis"])
def usage_in(request: pytest.FixtureRequest, services: Services) -> UsageBackend:
    if request.param == "database":
        return UsageBackend("database", lambda: service_with(services))
    make_limits = request.getfixturevalue("redis_limits")

    def make() -> CredentialService:
        ring = PepperRing.from_setting(None, services.keyring)
        limits = make_limits()
        return CredentialService(services.store, services.keyring, ring, limits, limits)

    return UsageBackend("redis", make)


STATUS_CHANGES = {
    "revoke": (revoke, "revoked", "Revoked"),
    "suspend": (suspend, "suspended", "Suspended"),
    "resume": (resume, "resumed", "Resumed"),
}


@dataclass
class Credential:
    """One credential driven as CredentialLifecycleWorkflow drives it: every change is a commit
    with the next transition id (`<workflow id>/<seq>:<action>:<version>`), and the workflow
    keeps the pruned lifecycle afterwards."""

    service: CredentialService
    spec: CredentialSpec
    lifecycle: KeyLifecycle
    seq: int = 0

    @property
    def id(self) -> str:
        return self.spec.credential_id

    @property
    def workflow_id(self) -> str:
        return f"keyrotor/credential/{self.spec.environment}/{self.id}"

    def commit(
        self,
        new: KeyLifecycle,
        action: str,
        event: str,
        at: datetime,
        *,
        version: int | None = None,
        new_version: int | None = None,
    ) -> CredentialTransitionCommit:
        self.seq += 1
        commit = CredentialTransitionCommit(
            transition_id=f"{self.workflow_id}/{self.seq}:credential.{action}:{version}",
            spec=self.spec,
            lifecycle=new,
            action=f"credential.{action}",
            event=f"credential{event}",
            at=at,
            actor="test",
            version=version,
            new_version=new_version,
        )
        self.service.commit_transition(commit)
        self.lifecycle = prune(new)
        return commit

    def rotate(
        self, at: datetime, reason: RotationReason = RotationReason.MANUAL, grace: int | None = None
    ) -> int:
        new = rotate(self.lifecycle, at, reason, grace)
        verb = "emergency_rotated" if reason == RotationReason.COMPROMISE else "rotated"
        n = new.last_version
        self.commit(new, verb, "Rotated", at, version=n, new_version=n)
        return n

    def change(self, action: str, at: datetime) -> None:
        """Revoke, suspend or resume, as the workflow's `change_status` does."""
        change, verb, event = STATUS_CHANGES[action]
        self.commit(change(self.lifecycle, at), verb, event, at)

    def apply_due(self, at: datetime, kind: TransitionKind) -> None:
        """Apply the next timed transition, which must be `kind` and due at `at`."""
        due = next_transition(self.lifecycle, at)
        assert due is not None and due.kind == kind and due.at <= at, due
        names = {
            TransitionKind.END_GRACE: ("version_retired", "VersionRetired"),
            TransitionKind.EXPIRE_VERSION: ("version_expired", "VersionExpired"),
            TransitionKind.EXPIRE_KEY: ("expired", "Expired"),
        }
        self.commit(
            apply_timed(self.lifecycle, due, at), *names[kind], at, version=due.version or None
        )

    def claim(self, number: int, actor: str = "test") -> str | None:
        return self.service.claim_secret(self.id, number, actor)

    def secret(self, number: int) -> str:
        plaintext = self.claim(number)
        assert plaintext is not None
        return plaintext

    def rows(self) -> dict[int, CredentialVersionRow]:
        _, versions = self.service.get(self.id)
        return {v.number: v for v in versions}


def create(
    service: CredentialService,
    at: datetime | None = None,
    *,
    expires_at: datetime | None = None,
    scopes: tuple[str, ...] = ("invoices:read",),
    rate_limit: int | None = None,
    rate_limit_window: int | None = None,
    usage_limit: int | None = None,
) -> Credential:
    at = at or now()
    spec = CredentialSpec(
        credential_id=new_credential_id(),
        environment="dev",
        name="billing",
        owner="team-billing",
        scopes=scopes,
        metadata={"team": "billing"},
        created_by="alice",
        rate_limit=rate_limit,
        rate_limit_window=rate_limit_window,
        usage_limit=usage_limit,
    )
    credential = Credential(service, spec, new_key(POLICY, at, expires_at))
    credential.commit(credential.lifecycle, "created", "Created", at, version=1, new_version=1)
    return credential


def audit_of(services: Services, credential_id: str) -> list[AuditRecordRow]:
    with services.store.session() as s:
        return list(
            s.scalars(
                select(AuditRecordRow)
                .where(
                    AuditRecordRow.object_kind == "credential",
                    AuditRecordRow.object_id == credential_id,
                )
                .order_by(AuditRecordRow.seq)
            )
        )


def events_of(services: Services, credential_id: str) -> list[EventRow]:
    with services.store.session() as s:
        return list(s.scalars(select(EventRow).where(EventRow.object_id == credential_id)))


NOT_FOUND = Verification(VerificationCode.NOT_FOUND)


def test_a_new_secret_is_handed_out_exactly_once_and_verifies(
    services: Services, svc: CredentialService
) -> None:
    expires = now() + timedelta(days=10)
    cred = create(svc, expires_at=expires, scopes=("invoices:read", "invoices:write"))
    stored, versions = svc.get(cred.id)
    assert (stored.status, stored.current_version, stored.workflow_id) == (
        "active",
        1,
        cred.workflow_id,
    )
    assert [(v.number, v.state) for v in versions] == [(1, "active")]
    sealed = versions[0].pending_secret
    assert sealed is not None

    secret = cred.claim(1, actor="alice")
    assert secret is not None
    presented = parse_credential(secret)
    assert (presented.environment, presented.lookup_id) == ("dev", versions[0].lookup_id)
    assert secret.encode() not in sealed and presented.secret.encode() not in sealed
    assert cred.claim(1) is None  # once only
    assert svc.claim_secret(cred.id, 2, "alice") is None
    assert svc.claim_secret("cred_nosuchcredential000", 1, "alice") is None

    row = cred.rows()[1]
    assert row.pending_secret is None
    assert len(row.salt) == 16
    assert row.pepper_id == services.keyring.current_id
    pepper = PepperRing.from_setting(None, services.keyring).current
    assert row.secret_hash == keyed_hash(pepper, row.salt, presented.secret)

    verification = svc.verify(secret)
    assert verification == Verification(
        code=VerificationCode.VALID,
        credential_id=cred.id,
        version=1,
        environment="dev",
        name="billing",
        owner="team-billing",
        scopes=("invoices:read", "invoices:write"),
        metadata={"team": "billing"},
        expires_at=expires,
        remaining=None,
        retry_after=None,
    )
    assert verification.valid
    assert presented.secret not in repr(verification)

    reveals = [r for r in audit_of(services, cred.id) if r.action == "credential.secret_revealed"]
    assert [(r.actor, r.version) for r in reveals] == [("alice", 1)]


def test_the_services_credentials_hash_under_the_pepper_derived_from_the_master_key(
    services: Services,
) -> None:
    cred = create(services.credentials)
    secret = cred.secret(1)
    assert cred.rows()[1].pepper_id == services.keyring.current_id
    # another process built from the same settings verifies it
    assert service_with(services).verify(secret).code == VerificationCode.VALID


def test_a_commit_is_idempotent_by_transition_id(
    services: Services, svc: CredentialService
) -> None:
    at = now()
    cred = create(svc, at)
    first = cred.rows()[1]
    created = CredentialTransitionCommit(
        transition_id=f"{cred.workflow_id}/1:credential.created:1",
        spec=cred.spec,
        lifecycle=new_key(POLICY, at),
        action="credential.created",
        event="credentialCreated",
        at=at,
        actor="test",
        version=1,
        new_version=1,
    )
    svc.commit_transition(created)  # the retry of an activity that did commit
    again = cred.rows()[1]
    assert list(cred.rows()) == [1]
    assert (again.lookup_id, again.secret_hash, again.salt) == (
        first.lookup_id,
        first.secret_hash,
        first.salt,
    )
    # the secret was made once: the one handed out is the one stored
    one = cred.secret(1)
    assert parse_credential(one).lookup_id == first.lookup_id
    assert svc.verify(one).version == 1

    n = cred.rotate(at + timedelta(minutes=1))
    rotated = CredentialTransitionCommit(
        transition_id=f"{cred.workflow_id}/2:credential.rotated:2",
        spec=cred.spec,
        lifecycle=rotate(new_key(POLICY, at), at + timedelta(minutes=1), RotationReason.MANUAL),
        action="credential.rotated",
        event="credentialRotated",
        at=at + timedelta(minutes=1),
        actor="test",
        version=2,
        new_version=2,
    )
    before = cred.rows()[2]
    svc.commit_transition(rotated)
    svc.commit_transition(rotated)
    assert n == 2 and sorted(cred.rows()) == [1, 2]
    assert cred.rows()[2].lookup_id == before.lookup_id
    assert cred.rows()[2].secret_hash == before.secret_hash
    transitions = [
        r.event_id for r in audit_of(services, cred.id) if r.action != "credential.secret_revealed"
    ]
    assert transitions == [created.transition_id, rotated.transition_id]
    assert sorted(e.event_id for e in events_of(services, cred.id)) == sorted(
        [created.transition_id, rotated.transition_id]
    )
    two = cred.secret(2)
    assert parse_credential(two).lookup_id == before.lookup_id
    assert svc.verify(two).version == 2


def test_every_unknown_or_wrong_credential_is_not_found_without_detail(
    svc: CredentialService,
) -> None:
    cred = create(svc)
    secret = cred.secret(1)
    p = parse_credential(secret)
    typo_at = len(secret) // 2
    attempts = {
        "unknown lookup id": format_credential("dev", new_lookup_id(), p.secret),
        "wrong secret": format_credential("dev", p.lookup_id, new_secret()),
        "secret off by one character": format_credential(
            "dev", p.lookup_id, p.secret[:-1] + ("A" if p.secret[-1] != "A" else "B")
        ),
        "other environment": format_credential("prod", p.lookup_id, p.secret),
        "typo": secret[:typo_at] + ("x" if secret[typo_at] != "x" else "y") + secret[typo_at + 1 :],
        "truncated": secret[:-1],
        "empty": "",
        "admin key": "kra_0123456789abcdef_" + "x" * 43,
    }
    for what, text in attempts.items():
        assert svc.verify(text) == NOT_FOUND, what
        assert svc.verify(text, ["invoices:read"]) == NOT_FOUND, what
    # failures do not lock the right secret out
    assert svc.verify(secret).code == VerificationCode.VALID


def test_a_secret_in_grace_verifies_until_the_workflow_ends_its_grace(
    services: Services, svc: CredentialService
) -> None:
    t0 = now()
    cred = create(svc, t0)
    old = cred.secret(1)
    n = cred.rotate(t0 + timedelta(seconds=1))  # the policy's grace: one day
    new = cred.secret(n)
    assert {k: r.state for k, r in cred.rows().items()} == {1: "grace", 2: "active"}
    assert svc.get(cred.id)[0].current_version == 2
    assert (svc.verify(old).code, svc.verify(old).version) == (VerificationCode.VALID, 1)
    assert (svc.verify(new).code, svc.verify(new).version) == (VerificationCode.VALID, 2)

    grace_until = cred.rows()[1].grace_until
    assert grace_until == t0 + timedelta(seconds=1, days=1)
    cred.apply_due(grace_until, TransitionKind.END_GRACE)
    assert cred.rows()[1].state == "retired"
    retired = svc.verify(old)
    assert (retired.code, retired.version, retired.credential_id) == (
        VerificationCode.EXPIRED,
        1,
        cred.id,
    )
    assert not retired.valid
    assert svc.verify(new).code == VerificationCode.VALID


def test_a_rotation_without_grace_retires_the_old_secret_at_once(svc: CredentialService) -> None:
    cred = create(svc)
    old = cred.secret(1)
    cred.rotate(now(), grace=0)
    assert cred.rows()[1].state == "retired"
    assert svc.verify(old).code == VerificationCode.EXPIRED
    assert svc.verify(cred.secret(2)).code == VerificationCode.VALID


def test_a_secret_past_its_grace_is_expired_even_if_the_workflow_is_late(
    svc: CredentialService,
) -> None:
    t0 = now() - timedelta(hours=2)
    cred = create(svc, t0)
    old = cred.secret(1)
    cred.rotate(t0 + timedelta(hours=1), grace=60)  # grace ended 59 minutes ago
    assert cred.rows()[1].state == "grace"  # the workflow has not ended it yet
    assert svc.verify(old).code == VerificationCode.EXPIRED
    assert svc.verify(cred.secret(2)).code == VerificationCode.VALID


def test_a_secret_past_its_max_lifetime_is_expired_even_if_the_workflow_is_late(
    svc: CredentialService,
) -> None:
    cred = create(svc, now() - timedelta(seconds=POLICY.max_lifetime + 60))
    secret = cred.secret(1)
    assert cred.rows()[1].state == "active"
    assert svc.verify(secret).code == VerificationCode.EXPIRED
    cred.apply_due(now(), TransitionKind.EXPIRE_VERSION)
    assert svc.verify(secret).code == VerificationCode.EXPIRED


def test_a_credential_past_its_expiry_is_expired_before_and_after_the_workflow_notices(
    svc: CredentialService,
) -> None:
    t0 = now() - timedelta(hours=2)
    expires = t0 + timedelta(hours=1)
    cred = create(svc, t0, expires_at=expires)
    secret = cred.secret(1)
    late = svc.verify(secret)
    assert (late.code, late.expires_at, late.credential_id) == (
        VerificationCode.EXPIRED,
        expires,
        cred.id,
    )
    assert svc.get(cred.id)[0].status == "active"
    cred.apply_due(now(), TransitionKind.EXPIRE_KEY)
    assert svc.get(cred.id)[0].status == "expired"
    assert svc.verify(secret).code == VerificationCode.EXPIRED
    # a credential that expires later verifies now
    later = create(svc, expires_at=now() + timedelta(minutes=5))
    assert svc.verify(later.secret(1)).code == VerificationCode.VALID


def test_revoking_refuses_every_secret_and_an_emergency_rotation_the_old_one(
    svc: CredentialService,
) -> None:
    cred = create(svc)
    old = cred.secret(1)
    cred.rotate(now())
    new = cred.secret(2)
    cred.change("revoke", now())
    assert {k: r.state for k, r in cred.rows().items()} == {1: "compromised", 2: "compromised"}
    assert [svc.verify(s).code for s in (old, new)] == [VerificationCode.REVOKED] * 2

    other = create(svc)
    leaked = other.secret(1)
    other.rotate(now(), RotationReason.COMPROMISE)
    assert svc.verify(leaked).code == VerificationCode.REVOKED
    assert svc.verify(other.secret(2)).code == VerificationCode.VALID


def test_a_suspended_credential_refuses_every_secret_until_resumed(
    svc: CredentialService,
) -> None:
    cred = create(svc)
    old = cred.secret(1)
    cred.rotate(now())
    new = cred.secret(2)
    cred.change("suspend", now())
    assert [svc.verify(s).code for s in (old, new)] == [VerificationCode.SUSPENDED] * 2
    cred.change("resume", now())
    assert {k: r.state for k, r in cred.rows().items()} == {1: "grace", 2: "active"}
    assert [svc.verify(s).version for s in (old, new)] == [1, 2]
    assert [svc.verify(s).code for s in (old, new)] == [VerificationCode.VALID] * 2


def test_scopes_must_all_be_granted(svc: CredentialService) -> None:
    cred = create(svc, scopes=("invoices:read", "invoices:write"), usage_limit=10)
    secret = cred.secret(1)
    assert svc.verify(secret, ["invoices:read"]).code == VerificationCode.VALID
    assert svc.verify(secret, ["invoices:write", "invoices:read"]).code == VerificationCode.VALID
    for required in (["admin"], ["invoices:read", "admin"], ["invoices"]):
        refused = svc.verify(secret, required)
        assert (refused.code, refused.credential_id, refused.scopes) == (
            VerificationCode.INSUFFICIENT_SCOPE,
            cred.id,
            ("invoices:read", "invoices:write"),
        )
        assert refused.remaining == 8  # refusals do not spend the usage budget
    assert svc.verify(secret).remaining == 7


def test_the_rate_limit_is_a_fixed_window_per_credential_across_its_versions(
    svc: CredentialService, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(api_credentials, "time", SimpleNamespace(time=lambda: clock[0]))
    cred = create(svc, rate_limit=2, rate_limit_window=60, usage_limit=10)
    old = cred.secret(1)
    cred.rotate(now())
    new = cred.secret(2)
    other = create(svc, rate_limit=2, rate_limit_window=60)
    other_secret = other.secret(1)

    assert svc.verify(old).code == VerificationCode.VALID
    clock[0] = 1001.0
    assert svc.verify(new).code == VerificationCode.VALID
    clock[0] = 1010.0
    limited = svc.verify(old)
    assert (limited.code, limited.retry_after, limited.credential_id) == (
        VerificationCode.RATE_LIMITED,
        50.0,
        cred.id,
    )
    assert limited.remaining == 8  # a limited request does not spend the usage budget
    assert svc.verify(new).code == VerificationCode.RATE_LIMITED
    # a wrong secret is not found, whatever the limit says; other credentials are not limited
    assert svc.verify(format_credential("dev", parse_credential(new).lookup_id, new_secret())) == (
        NOT_FOUND
    )
    assert svc.verify(other_secret).code == VerificationCode.VALID
    clock[0] = 1059.5
    assert svc.verify(new).retry_after == 0.5
    clock[0] = 1060.0  # a new window
    after = svc.verify(new)
    assert (after.code, after.retry_after, after.remaining) == (VerificationCode.VALID, None, 7)


def test_the_usage_limit_is_one_budget_shared_by_the_versions_in_grace(
    usage_in: UsageBackend,
) -> None:
    svc = usage_in.make()
    cred = create(svc, usage_limit=3)
    old = cred.secret(1)
    first = svc.verify(old)
    assert (first.code, first.remaining) == (VerificationCode.VALID, 2)
    cred.rotate(now())
    new = cred.secret(2)
    assert cred.rows()[1].state == "grace"
    assert [(v.code, v.remaining) for v in (svc.verify(new), svc.verify(old))] == [
        (VerificationCode.VALID, 1),
        (VerificationCode.VALID, 0),
    ]
    for secret in (new, old):
        spent = svc.verify(secret)
        assert (spent.code, spent.remaining, spent.valid) == (
            VerificationCode.USAGE_EXCEEDED,
            0,
            False,
        )
    svc.flush_usage()
    assert svc.get(cred.id)[0].remaining == 0


def test_the_usage_limit_is_exact_under_concurrent_verifications(
    usage_in: UsageBackend,
) -> None:
    """Two services stand for two API processes on one store (and one Redis)."""
    svc, other = usage_in.make(), usage_in.make()
    cred = create(svc, usage_limit=10)
    secret = cred.secret(1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: (svc, other)[n % 2].verify(secret), range(30)))
    valid = [r.remaining for r in results if r.code == VerificationCode.VALID]
    assert sorted(r for r in valid if r is not None) == list(range(10))
    assert len(valid) == 10
    assert [r.code for r in results].count(VerificationCode.USAGE_EXCEEDED) == 20
    if usage_in.name == "redis":
        # counted in Redis: the store hears of the uses at each process's flush
        assert svc.get(cred.id)[0].remaining == 10
        assert svc.flush_usage() + other.flush_usage() >= 3  # usage rows, uses counted in Redis
        assert svc.flush_usage() + other.flush_usage() == 0
    assert svc.get(cred.id)[0].remaining == 0


def test_a_rate_limited_verification_spends_none_of_the_usage_limit(
    usage_in: UsageBackend,
) -> None:
    svc = usage_in.make()
    secret = create(svc, rate_limit=2, rate_limit_window=60, usage_limit=10).secret(1)
    answers = [svc.verify(secret) for _ in range(4)]
    assert [(a.code, a.remaining) for a in answers] == [
        (VerificationCode.VALID, 9),
        (VerificationCode.VALID, 8),
        (VerificationCode.RATE_LIMITED, 8),
        (VerificationCode.RATE_LIMITED, 8),
    ]
    assert all(a.retry_after is not None and 0 < a.retry_after <= 60 for a in answers[2:])
    svc.flush_usage()
    assert svc.get(answers[0].credential_id or "")[0].remaining == 8


def test_usage_limits_go_to_the_store_while_redis_does_not_answer(
    services: Services, private_redis: PrivateRedis
) -> None:
    limits = RedisLimits(private_redis.url)  # never started: nothing answers there
    ring = PepperRing.from_setting(None, services.keyring)
    svc = CredentialService(services.store, services.keyring, ring, limits, limits)
    secret = create(svc, usage_limit=2).secret(1)
    answers = [svc.verify(secret) for _ in range(3)]
    assert [(a.code, a.remaining) for a in answers] == [
        (VerificationCode.VALID, 1),
        (VerificationCode.VALID, 0),
        (VerificationCode.USAGE_EXCEEDED, 0),
    ]
    assert svc.get(answers[0].credential_id or "")[0].remaining == 0  # no flush needed
    svc.close()


def test_flush_usage_writes_counts_failures_and_last_use(svc: CredentialService) -> None:
    used, failed_only = create(svc), create(svc)
    secret, other = used.secret(1), failed_only.secret(1)
    p, q = parse_credential(secret), parse_credential(other)
    assert svc.flush_usage() == 0  # nothing buffered yet

    before = now()
    assert svc.verify(secret).valid
    assert svc.verify(secret).valid
    after = now()
    svc.verify(format_credential("dev", p.lookup_id, new_secret()))  # wrong secret
    svc.verify(format_credential("prod", p.lookup_id, p.secret))  # wrong environment
    svc.verify(format_credential("dev", q.lookup_id, new_secret()))
    svc.verify(format_credential("dev", new_lookup_id(), new_secret()))  # nobody's
    svc.verify(secret[:-1])  # malformed: nobody's
    # nothing is written before the flush
    assert (svc.get(used.id)[0].usage_count, svc.get(used.id)[0].last_used_at) == (0, None)

    assert svc.flush_usage() == 2
    row, row2 = svc.get(used.id)[0], svc.get(failed_only.id)[0]
    assert (row.usage_count, row.failure_count) == (2, 2)
    assert row.last_used_at is not None and before <= row.last_used_at <= after
    assert (row2.usage_count, row2.failure_count, row2.last_used_at) == (0, 1, None)

    assert svc.flush_usage() == 0
    assert svc.get(used.id)[0].usage_count == 2  # a second flush adds nothing

    assert svc.verify(secret).valid
    assert svc.flush_usage() == 1
    row = svc.get(used.id)[0]
    assert (row.usage_count, row.failure_count) == (3, 2)  # added, not overwritten
    assert row.last_used_at is not None and row.last_used_at >= after


def test_two_processes_flushing_the_same_credentials_at_once_lose_nothing(
    usage_in: UsageBackend,
) -> None:
    """Two API processes that used the same credentials in opposite orders flush at the same
    moment, as at a shutdown of both: on PostgreSQL each flush locks the credentials' rows, and
    neither may fail on the other (a deadlock) or lose a count."""
    svc, other = usage_in.make(), usage_in.make()
    creds = [create(svc, usage_limit=1000) for _ in range(40)]
    secrets_of = [c.secret(1) for c in creds]
    start = threading.Barrier(2)  # each round's two flushes set off together

    def flush(service: CredentialService) -> int:
        start.wait()
        return service.flush_usage()

    rounds = 8
    for _ in range(rounds):
        for secret in secrets_of:
            assert svc.verify(secret).valid
        for secret in reversed(secrets_of):
            assert other.verify(secret).valid
        with ThreadPoolExecutor(max_workers=2) as pool:
            flushed = list(pool.map(flush, (svc, other)))
        assert flushed == ([40, 40] if usage_in.name == "database" else [80, 80])
    rows = [svc.get(c.id)[0] for c in creds]
    assert {(r.usage_count, r.remaining) for r in rows} == {(2 * rounds, 1000 - 2 * rounds)}


def test_a_flush_the_store_refuses_keeps_the_counts_for_the_next_one(
    usage_in: UsageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = usage_in.make()
    cred = create(svc, usage_limit=10)
    secret = cred.secret(1)
    assert [svc.verify(secret).remaining for _ in range(2)] == [9, 8]
    real_write = svc._store.write

    @contextlib.contextmanager
    def failing_write() -> Iterator[Any]:
        with real_write() as s:
            yield s
            raise OperationalError("UPDATE", {}, Exception("the store went away"))

    monkeypatch.setattr(svc._store, "write", failing_write)
    with pytest.raises(OperationalError):
        svc.flush_usage()
    monkeypatch.setattr(svc._store, "write", real_write)
    assert svc.verify(secret).remaining == 7  # counted after, and kept with the rest
    svc.flush_usage()
    row = svc.get(cred.id)[0]
    assert (row.usage_count, row.remaining, row.last_used_at is not None) == (3, 7, True)
    assert svc.flush_usage() == 0


def test_an_unclaimed_secret_is_deleted_when_the_previous_grace_ends(
    svc: CredentialService,
) -> None:
    t0 = now()
    cred = create(svc, t0)
    cred.secret(1)
    cred.rotate(t0, RotationReason.SCHEDULED)  # nobody asked for it: it waits for a reveal
    assert cred.rows()[2].pending_secret is not None
    grace_until = cred.rows()[1].grace_until
    assert grace_until is not None
    cred.apply_due(grace_until, TransitionKind.END_GRACE)
    assert [r.pending_secret for r in cred.rows().values()] == [None, None]
    assert cred.claim(2) is None


def test_a_secret_revealed_during_grace_verifies(svc: CredentialService) -> None:
    t0 = now()
    cred = create(svc, t0)
    cred.secret(1)
    cred.rotate(t0, RotationReason.SCHEDULED)
    revealed = cred.claim(2, actor="team-billing")
    assert revealed is not None
    assert svc.verify(revealed).version == 2
    assert cred.claim(2) is None


def test_revoking_deletes_the_unclaimed_secrets(svc: CredentialService) -> None:
    cred = create(svc)
    assert cred.rows()[1].pending_secret is not None
    cred.change("revoke", now())
    assert cred.rows()[1].pending_secret is None
    assert cred.claim(1) is None

    rotated = create(svc)
    rotated.secret(1)
    rotated.rotate(now(), RotationReason.SCHEDULED)
    assert rotated.rows()[2].pending_secret is not None
    rotated.change("revoke", now())
    assert [r.pending_secret for r in rotated.rows().values()] == [None, None]
    assert rotated.claim(2) is None


def ring(setting: str | None, services: Services) -> PepperRing:
    return PepperRing.from_setting(setting, services.keyring)


def test_pepper_rotation_rehashes_a_secret_when_it_next_verifies(services: Services) -> None:
    under_a = service_with(services, ring(PEPPER_A, services))
    cred = create(under_a)
    secret = cred.secret(1)
    presented = parse_credential(secret)
    assert cred.rows()[1].pepper_id == pepper_id(PEPPER_A_BYTES)

    under_ba = service_with(services, ring(f"{PEPPER_B},{PEPPER_A}", services))
    # a wrong secret changes nothing
    assert under_ba.verify(format_credential("dev", presented.lookup_id, new_secret())) == (
        NOT_FOUND
    )
    old = cred.rows()[1]
    assert old.pepper_id == pepper_id(PEPPER_A_BYTES)

    assert under_ba.verify(secret).code == VerificationCode.VALID
    moved = cred.rows()[1]
    assert moved.pepper_id == pepper_id(PEPPER_B_BYTES)
    assert moved.salt != old.salt
    assert moved.secret_hash == keyed_hash(PEPPER_B_BYTES, moved.salt, presented.secret)
    assert under_ba.verify(secret).code == VerificationCode.VALID
    # once re-hashed, pepper A can be dropped
    assert service_with(services, ring(PEPPER_B, services)).verify(secret).code == (
        VerificationCode.VALID
    )


def test_a_secret_whose_pepper_was_dropped_is_not_found(services: Services) -> None:
    under_a = service_with(services, ring(PEPPER_A, services))
    cred = create(under_a)
    secret = cred.secret(1)
    assert service_with(services, ring(PEPPER_B, services)).verify(secret) == NOT_FOUND
    assert cred.rows()[1].pepper_id == pepper_id(PEPPER_A_BYTES)
    assert under_a.verify(secret).code == VerificationCode.VALID  # the failure harmed nothing


def test_derived_peppers_follow_a_new_master_key(services: Services) -> None:
    cred = create(service_with(services))
    secret = cred.secret(1)
    cred.rotate(now(), RotationReason.SCHEDULED)  # v2 sealed under the old master key
    keyring = MasterKeyring.parse(f"{NEW_MASTER_KEY},{TEST_MASTER_KEY}")
    after = CredentialService(services.store, keyring, PepperRing.from_setting(None, keyring))
    assert after.verify(secret).code == VerificationCode.VALID
    assert cred.rows()[1].pepper_id == keyring.current_id != services.keyring.current_id
    revealed = after.claim_secret(cred.id, 2, "team-billing")
    assert revealed is not None and after.verify(revealed).version == 2


def test_the_first_explicit_pepper_keeps_credentials_of_the_derived_pepper(
    services: Services,
) -> None:
    cred = create(service_with(services))  # the default: pepper derived from the master key
    secret = cred.secret(1)
    after = service_with(services, ring(PEPPER_B, services))
    assert after.verify(secret).code == VerificationCode.VALID


class CountingHMAC:
    """Stands in for the `hmac` module: counts `hmac.new` (one keyed hash each)."""

    def __init__(self) -> None:
        self.calls = 0

    def new(self, key: bytes, msg: bytes, digestmod: Any) -> hmac.HMAC:
        self.calls += 1
        return hmac.new(key, msg, digestmod)

    def __getattr__(self, name: str) -> Any:
        return getattr(hmac, name)


def test_verify_costs_one_keyed_hash_and_one_read_whether_or_not_the_lookup_id_exists(
    services: Services, svc: CredentialService, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = create(svc)
    secret = cred.secret(1)
    p = parse_credential(secret)
    dropped = create(service_with(services, ring(PEPPER_A, services)))
    dropped_p = parse_credential(dropped.secret(1))

    # Count HMAC computations where they happen (core.credentials), whichever helper calls them.
    hmacs = CountingHMAC()
    monkeypatch.setattr(core_credentials, "hmac", hmacs)
    statements: list[str] = []

    def record(_c: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "credential" in statement:
            statements.append(statement)

    event.listen(services.store.engine, "before_cursor_execute", record)
    try:
        cost: dict[str, tuple[int, int]] = {}
        cases = {
            "unknown lookup id": format_credential("dev", new_lookup_id(), p.secret),
            "wrong secret": format_credential("dev", p.lookup_id, new_secret()),
            "wrong environment": format_credential("prod", p.lookup_id, p.secret),
            "pepper no longer listed": format_credential(
                "dev", dropped_p.lookup_id, dropped_p.secret
            ),
            "valid": secret,
        }
        for what, text in cases.items():
            hmacs.calls = 0
            statements.clear()
            code = svc.verify(text).code
            assert code == (
                VerificationCode.VALID if what == "valid" else VerificationCode.NOT_FOUND
            )
            cost[what] = (hmacs.calls, len(statements))
        # a malformed key is refused before any lookup
        hmacs.calls = 0
        statements.clear()
        assert svc.verify(secret[:-1]) == NOT_FOUND
        cost["malformed"] = (hmacs.calls, len(statements))
    finally:
        event.remove(services.store.engine, "before_cursor_execute", record)
    assert cost == {
        "unknown lookup id": (1, 1),
        "wrong secret": (1, 1),
        "wrong environment": (1, 1),
        "pepper no longer listed": (1, 1),
        "valid": (1, 1),
        "malformed": (0, 0),
    }


def test_a_version_from_a_lost_workflow_task_is_parked(svc: CredentialService) -> None:
    at = now()
    cred = create(svc, at)
    first = cred.secret(1)
    before = cred.lifecycle
    cred.rotate(at)  # committed, but the workflow task that made it was lost
    lost = cred.secret(2)  # an owner's reveal got it meanwhile
    cred.seq, cred.lifecycle = 1, before  # the replay takes another path at the same step
    cred.change("suspend", at)
    cred.change("resume", at)
    assert {k: r.state for k, r in cred.rows().items()} == {1: "active", 2: "pending"}
    assert svc.get(cred.id)[0].current_version == 1
    assert svc.verify(first).code == VerificationCode.VALID
    assert svc.verify(lost).code == VerificationCode.NOT_FOUND


def lost_then_rotated_again(svc: CredentialService) -> tuple[Credential, str]:
    """A rotation whose workflow task is lost after its commit (its secret revealed in the
    meantime), a replay that suspends and resumes instead, then a real rotation to v2."""
    at = now()
    cred = create(svc, at)
    cred.secret(1)
    before = cred.lifecycle
    cred.rotate(at, RotationReason.SCHEDULED)
    lost = cred.secret(2)
    cred.seq, cred.lifecycle = 1, before
    cred.change("suspend", at)
    cred.change("resume", at)
    assert cred.rotate(at + timedelta(seconds=1)) == 2
    return cred, lost


def test_a_version_made_again_after_a_lost_task_gets_a_secret_to_hand_out(
    svc: CredentialService,
) -> None:
    cred, _ = lost_then_rotated_again(svc)
    secret = cred.claim(2)
    assert secret is not None and svc.verify(secret).version == 2


def test_a_secret_from_a_lost_timeline_stays_refused_after_the_version_is_made_again(
    svc: CredentialService,
) -> None:
    _, lost = lost_then_rotated_again(svc)
    assert svc.verify(lost).code == VerificationCode.NOT_FOUND


def test_two_concurrent_claims_hand_the_secret_out_once(
    services: Services,
    svc: CredentialService,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    cred = create(svc)
    rendezvous = threading.Barrier(2)
    real_open = open_envelope

    def open_together(*args: Any) -> bytes:
        # Both claims hold the row before either decrypts: a schedule that can happen by
        # itself. Where claims serialise (SQLite), the second never gets here: go on alone.
        with contextlib.suppress(threading.BrokenBarrierError):
            rendezvous.wait(timeout=0.2)
        return real_open(*args)

    monkeypatch.setattr(api_credentials, "open_envelope", open_together)
    with ThreadPoolExecutor(max_workers=2) as pool:
        claims = dict(
            zip(["alice", "bob"], pool.map(cred.claim, [1, 1], ["alice", "bob"]), strict=True)
        )
    received = [who for who, secret in claims.items() if secret is not None]
    assert len(received) == 1
    reveals = [r for r in audit_of(services, cred.id) if r.action == "credential.secret_revealed"]
    assert [r.actor for r in reveals] == received


# --- the verification cache and its change feed ----------------------------------------------


def feed_of(svc: CredentialService, services: Services) -> ChangeFeed:
    return ChangeFeed(services.store, {"credential": svc.rows, "handle": svc.rows})


def test_cached_rows_are_dropped_by_the_change_feed_and_unused_when_it_is_late(
    svc: CredentialService, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.changes as module

    feed = feed_of(svc, services)
    cred = create(svc)
    secret = cred.secret(1)
    feed.poll()  # the first read of the feed: the cache is trusted from now on
    assert svc.verify(secret).code == VerificationCode.VALID  # read from the store, cached
    cred.change("revoke", now())
    # committed, but not yet read from the feed: the cached row still answers
    assert svc.verify(secret).code == VerificationCode.VALID
    assert feed.poll() >= 1
    assert svc.verify(secret).code == VerificationCode.REVOKED

    # a cache whose feed was last read too long ago is not used at all
    other = create(svc)
    other_secret = other.secret(1)
    feed.poll()
    assert svc.verify(other_secret).code == VerificationCode.VALID
    other.change("suspend", now())
    monkeypatch.setattr(module, "CACHE_STALE_AFTER", 0.0)
    assert svc.verify(other_secret).code == VerificationCode.SUSPENDED


def test_a_row_read_before_a_change_is_not_cached_after_it(
    svc: CredentialService, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import Connection

    cred = create(svc)
    presented = parse_credential(cred.secret(1))
    feed_of(svc, services).poll()
    # without a change during the read, the row is cached
    svc._lookup(presented, "credential")
    assert svc.rows.get(presented.lookup_id)[0] is True
    svc.forget(cred.id)

    # a poll drops the credential while the read is in flight: the row read is not cached
    execute = Connection.execute

    def execute_while_a_poll_drops(self: Connection, *args: Any, **kwargs: Any) -> Any:
        result = execute(self, *args, **kwargs)
        svc.rows.drop([cred.id])
        return result

    monkeypatch.setattr(Connection, "execute", execute_while_a_poll_drops)
    row, _ = svc._lookup(presented, "credential")
    assert row is not None  # answered from what was read
    assert svc.rows.get(presented.lookup_id) == (False, None)


def test_the_fast_path_hands_writes_to_a_thread_before_counting_anything(
    svc: CredentialService,
) -> None:
    plain = create(svc)
    assert svc.verify(plain.secret(1), writes=False).code == VerificationCode.VALID
    limited = create(svc, usage_limit=1, rate_limit=1, rate_limit_window=60)
    secret = limited.secret(1)
    with pytest.raises(WriteNeeded):
        svc.verify(secret, writes=False)
    # nothing was spent: the rate window and the budget are both still whole
    result = svc.verify(secret)
    assert (result.code, result.remaining) == (VerificationCode.VALID, 0)
    assert svc.verify(secret).code == VerificationCode.RATE_LIMITED


def test_a_credential_without_a_rate_limit_never_asks_the_limiter(
    services: Services, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """With a Redis that does not answer: a credential without a rate limit verifies on the
    event loop's path and the limiter never hears of it (not a word logged); one with a rate
    limit goes to a thread, and is held to its limit by this process (the limiter fails open
    to per-process windows)."""
    ring = PepperRing.from_setting(None, services.keyring)
    limiter = RedisLimits(private_redis.url)
    svc = CredentialService(services.store, services.keyring, ring, limiter)
    caplog.set_level(logging.WARNING, logger="keyrotor.ratelimit")
    plain = create(svc).secret(1)
    assert {svc.verify(plain, writes=False).code for _ in range(3)} == {VerificationCode.VALID}
    assert caplog.records == []
    limited = create(svc, rate_limit=2, rate_limit_window=60).secret(1)
    with pytest.raises(WriteNeeded):
        svc.verify(limited, writes=False)
    assert [svc.verify(limited).code for _ in range(3)] == [
        VerificationCode.VALID,
        VerificationCode.VALID,
        VerificationCode.RATE_LIMITED,
    ]
    assert len(caplog.records) == 1
    svc.close()


# --- failed verifications in the audit trail, in aggregate -------------------------------------


def test_failed_verifications_are_audited_once_a_call_in_aggregate(
    svc: CredentialService, services: Services
) -> None:
    good, revoked = create(svc), create(svc)
    good_secret, revoked_secret = good.secret(1), revoked.secret(1)
    revoked.change("revoke", now())
    answers = [svc.verify(good_secret) for _ in range(2)]
    answers += [svc.verify(revoked_secret) for _ in range(3)]
    answers += [svc.verify("kr_dev_" + "x" * 40) for _ in range(4)]  # malformed: NOT_FOUND
    answers.append(svc.verify(good_secret[:-1] + ("A" if good_secret[-1] != "A" else "B")))
    failed: dict[str, int] = {}
    for a in answers:
        if a.code != VerificationCode.VALID:
            failed[a.code] = failed.get(a.code, 0) + 1
    assert failed["REVOKED"] == 3 and sum(failed.values()) == 8

    with services.store.session() as s:
        before = s.scalar(select(func.max(AuditRecordRow.seq)))
    assert svc.audit_failures() == 1
    assert svc.audit_failures() == 0  # nothing new since
    with services.store.session() as s:
        [record] = s.scalars(select(AuditRecordRow).where(AuditRecordRow.seq > before)).all()
    assert (record.action, record.object_kind, record.object_id, record.actor) == (
        "credential.verification_failures",
        "credential",
        "*",
        "keyrotor",
    )
    assert {k: v for k, v in record.details.items() if k.isupper()} == failed
    assert record.details["distinct"] == 1  # the revoked one; the malformed ones name none
    with services.store.session() as s:
        assert audit.verify_chain(s).ok
