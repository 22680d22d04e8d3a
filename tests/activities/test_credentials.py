"""The credential commit activity: what leaves it when the store fails."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError
from temporalio.exceptions import ApplicationError

from activities.credentials import CredentialActivities
from core.api_credentials import CredentialService
from core.objects import CredentialTransitionCommit

SECRETISH = "DETAIL: Failing row contains (krc_dev_x, \\x0a1b2c3d4e5f salt, sealed...)"


class FailingStore(CredentialService):
    def __init__(self) -> None:  # no store: commit_transition fails at once
        pass

    def commit_transition(self, c: CredentialTransitionCommit) -> None:
        raise IntegrityError(
            "INSERT INTO credential_versions ...", {"salt": b"s"}, Exception(SECRETISH)
        )


def test_a_store_failure_leaves_the_activity_without_its_text() -> None:
    activity = CredentialActivities(FailingStore())
    with pytest.raises(ApplicationError) as info:
        activity.commit_credential_transition(None)  # type: ignore[arg-type]
    e = info.value
    assert (e.message, e.type, e.non_retryable) == (
        "the store failed: IntegrityError",
        "StoreError",
        False,
    )
    # nothing of the statement, its parameters or the server's detail travels with it
    assert e.__cause__ is None and e.__suppress_context__
    assert "Failing row" not in repr(e) and "salt" not in repr(e)
