"""Webhook deliveries as workflows: one dispatcher per deployment fans events out, one short
workflow per delivery retries it with backoff.

`WebhookDispatcherWorkflow` (id `keyrotor/webhooks/<task queue>`) runs forever: its
`fan_out_webhook_events` activity waits for new events and makes a delivery row for each
webhook that wants one; each delivery gets a `WebhookDeliveryWorkflow`
(`keyrotor/webhook-delivery/<task queue>/<delivery id>`), whose `deliver_webhook` activity
Temporal retries (1 s, doubling, at most 10 min apart) up to the configured attempts before the
delivery is marked failed. A replay starts the delivery's workflow again under the same id.
Only ids travel: the events, the URLs and the secrets stay in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from core.webhooks import DeliveryBatch

FAN_OUT_WAIT = 30.0  # seconds one fan-out activity waits for events
RETRY_CEILING = timedelta(minutes=10)


def dispatcher_id(task_queue: str) -> str:
    return f"keyrotor/webhooks/{task_queue}"


def delivery_workflow_id(task_queue: str, delivery_id: int) -> str:
    return f"keyrotor/webhook-delivery/{task_queue}/{delivery_id}"


@dataclass(frozen=True)
class DispatcherInput:
    max_attempts: int
    # the last event fanned out; None: start after the newest event there is
    after: int | None = None


@dataclass(frozen=True)
class FanOut:
    after: int
    wait_seconds: float


@dataclass(frozen=True)
class DeliveryInput:
    delivery_id: int
    max_attempts: int


@workflow.defn
class WebhookDeliveryWorkflow:
    """Sends one delivery: retried with backoff, then marked failed (replayable)."""

    @workflow.run
    async def run(self, input: DeliveryInput) -> str:
        try:
            delivered = await workflow.execute_activity(
                "deliver_webhook",
                input.delivery_id,
                result_type=bool,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    backoff_coefficient=2.0,
                    maximum_interval=RETRY_CEILING,
                    maximum_attempts=input.max_attempts,
                    non_retryable_error_types=["WebhookNotFoundError"],
                ),
            )
        except ActivityError:
            await workflow.execute_activity(
                "fail_webhook_delivery",
                input.delivery_id,
                start_to_close_timeout=timedelta(seconds=30),
            )
            return "failed"
        return "delivered" if delivered else "failed"


@workflow.defn
class WebhookDispatcherWorkflow:
    """Fans lifecycle events out to webhooks, forever (continuing as new when suggested)."""

    @workflow.init
    def __init__(self, input: DispatcherInput) -> None:
        self._input = input
        self._after = input.after

    @workflow.run
    async def run(self, input: DispatcherInput) -> None:
        if self._after is None:
            self._after = await workflow.execute_activity(
                "last_event_id", result_type=int, start_to_close_timeout=timedelta(seconds=30)
            )
        queue = workflow.info().task_queue
        while not workflow.info().is_continue_as_new_suggested():
            batch = await workflow.execute_activity(
                "fan_out_webhook_events",
                FanOut(self._after, FAN_OUT_WAIT),
                result_type=DeliveryBatch,
                start_to_close_timeout=timedelta(seconds=FAN_OUT_WAIT + 30),
                heartbeat_timeout=timedelta(seconds=10),
            )
            for delivery_id in batch.deliveries:
                try:
                    await workflow.start_child_workflow(
                        WebhookDeliveryWorkflow.run,
                        DeliveryInput(delivery_id, self._input.max_attempts),
                        id=delivery_workflow_id(queue, delivery_id),
                        parent_close_policy=ParentClosePolicy.ABANDON,
                    )
                except WorkflowAlreadyStartedError:
                    pass  # a retried fan-out: this delivery is on its way
            self._after = batch.after
        workflow.continue_as_new(DispatcherInput(self._input.max_attempts, self._after))
