"""Activities over `core.keys`: every side effect of a key's lifecycle happens here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.algorithms import AlgorithmError
from core.keys import KeyService
from core.objects import ImportWithdrawnError, KeyTransitionCommit
from core.providers.base import ProviderError


class KeyActivities:
    """Key activities; the worker builds one instance with its dependencies."""

    def __init__(self, keys: KeyService) -> None:
        self._keys = keys

    @activity.defn(name="commit_key_transition")
    def commit_key_transition(self, commit: KeyTransitionCommit) -> str | None:
        """Create the new version's material if any, then commit the transition (idempotent);
        returns the new version's algorithm (None: no new version).

        Provider faults that can pass (unavailable, throttled) are retried by Temporal; the
        others fail the activity for good, typed by the error class name.
        """
        try:
            return self._keys.commit_transition(commit)
        except ProviderError as e:
            if e.retryable and activity.info().attempt == 1:
                # once per transition and outage: the first failed attempt says so
                with contextlib.suppress(SQLAlchemyError):
                    self._keys.record_provider_unavailable(
                        commit.spec.provider, commit.spec.key_id, type(e).__name__
                    )
            raise ApplicationError(
                str(e), type=type(e).__name__, non_retryable=not e.retryable
            ) from e
        except (AlgorithmError, ImportWithdrawnError) as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from e
        except SQLAlchemyError as e:
            raise store_failure(e) from None


@dataclass(frozen=True)
class VersionRef:
    key_id: str
    number: int


class KeyUsageActivities:
    """What usage-aware retirement asks the store (the worker builds one instance)."""

    def __init__(self, keys: KeyService) -> None:
        self._keys = keys

    @activity.defn(name="key_version_last_used")
    def last_used(self, ref: VersionRef) -> datetime | None:
        """When the version was last used in grace (None: never)."""
        try:
            return self._keys.last_used(ref.key_id, ref.number)
        except SQLAlchemyError as e:
            raise store_failure(e) from None


def store_failure(e: SQLAlchemyError) -> ApplicationError:
    """A retryable failure that names the database error without its text: a failed statement
    can carry salts, hashes or sealed material in its message (PostgreSQL's DETAIL line)."""
    return ApplicationError(f"the store failed: {type(e).__name__}", type="StoreError")
