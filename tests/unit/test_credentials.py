"""Admin keys: keyed hashes whose pepper rotates with the master key."""

from __future__ import annotations

import base64

import pytest

from core.credentials import AdminKeys, AuthenticationError, Role
from core.envelope import MasterKeyring
from core.services import Services
from core.store.models import AdminKeyRow
from tests.fixtures.temporal import TEST_MASTER_KEY

NEW_MASTER_KEY = base64.b64encode(bytes(range(100, 132))).decode()


def test_admin_keys_survive_a_new_master_key_and_are_rehashed(services: Services) -> None:
    old = MasterKeyring.parse(TEST_MASTER_KEY)
    key = AdminKeys(services.store, old).create("ops", Role.OPERATOR, "test")
    key_id = key.split("_")[1]

    both = MasterKeyring.parse(f"{NEW_MASTER_KEY},{TEST_MASTER_KEY}")
    assert AdminKeys(services.store, both).authenticate(key).role == Role.OPERATOR
    with services.store.session() as s:
        row = s.get(AdminKeyRow, key_id)
        assert row is not None and row.pepper_id == both.current_id != old.current_id
    # once re-hashed, the old master key can be dropped
    only_new = MasterKeyring.parse(NEW_MASTER_KEY)
    assert AdminKeys(services.store, only_new).authenticate(key).key_id == key_id
    # a key whose pepper's master key is gone fails closed
    other = AdminKeys(services.store, old).create("late", Role.AUDITOR, "test")
    with pytest.raises(AuthenticationError):
        AdminKeys(services.store, only_new).authenticate(other)


def test_wrong_secrets_and_reused_ids_are_refused(services: Services) -> None:
    keys = AdminKeys(services.store, MasterKeyring.parse(TEST_MASTER_KEY))
    key = keys.create("ops", Role.ADMIN, "test")
    prefix, key_id, secret = key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'x' * len(secret)}"
    with pytest.raises(AuthenticationError):
        keys.authenticate(forged)
    with pytest.raises(AuthenticationError):  # a bootstrap key may not take over an id
        keys.ensure(forged, "bootstrap", Role.ADMIN)
    keys.ensure(key, "bootstrap", Role.ADMIN)  # the same key again is fine
    with pytest.raises(AuthenticationError):
        keys.authenticate("kra_nope")
