"""Activities over `core.api_credentials`: every side effect of a credential's lifecycle."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.keys import store_failure
from core.api_credentials import CredentialService, RehashBatch
from core.objects import CredentialTransitionCommit, ImportWithdrawnError


@dataclass(frozen=True)
class RehashRequest:
    cursor: str
    limit: int


class CredentialActivities:
    """Credential activities; the worker builds one instance with its dependencies."""

    def __init__(self, credentials: CredentialService) -> None:
        self._credentials = credentials

    @activity.defn(name="commit_credential_transition")
    def commit_credential_transition(self, commit: CredentialTransitionCommit) -> None:
        """Generate the new version's secret if any and commit the transition (idempotent).

        Returns nothing: the secret is stored as its hash and a sealed copy for one reveal.
        """
        try:
            self._credentials.commit_transition(commit)
        except ImportWithdrawnError as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from e
        except SQLAlchemyError as e:
            raise store_failure(e) from None

    @activity.defn(name="rehash_credential_batch")
    def rehash_batch(self, request: RehashRequest) -> RehashBatch:
        """Re-hash a batch of stored hashes under the current pepper (PepperRotationWorkflow)."""
        try:
            return self._credentials.rehash_batch(request.cursor, request.limit)
        except SQLAlchemyError as e:
            raise store_failure(e) from None
