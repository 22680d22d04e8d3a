"""Activities of `MasterKeyRotationWorkflow` over `core.master_keys`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.keys import store_failure
from core.master_keys import MasterKeyError, MasterKeyService, ResealBatch


@dataclass(frozen=True)
class ResealRequest:
    column: str
    cursor: str
    limit: int


@dataclass(frozen=True)
class RetireRequest:
    actor: str
    reason: str
    workflow_id: str


class MasterKeyActivities:
    def __init__(self, master_keys: MasterKeyService) -> None:
        self._master_keys = master_keys

    @activity.defn(name="reseal_master_key_batch")
    def reseal_batch(self, request: ResealRequest) -> ResealBatch:
        """Re-seal one batch of a sealed column under the current master key."""
        with _failures():
            return self._master_keys.reseal_batch(request.column, request.cursor, request.limit)

    @activity.defn(name="retire_old_master_keys")
    def retire_old(self, request: RetireRequest) -> list[str]:
        """Retire every older master key once nothing is sealed under it; audited."""
        with _failures():
            return self._master_keys.retire_old(request.actor, request.reason, request.workflow_id)


@contextlib.contextmanager
def _failures() -> Iterator[None]:
    """A job that cannot go on fails for good (a blob no key opens, blobs left under an old
    key); the store's failures are retried."""
    try:
        yield
    except MasterKeyError as e:
        raise ApplicationError(str(e), type="MasterKeyError", non_retryable=True) from None
    except SQLAlchemyError as e:
        raise store_failure(e) from None
