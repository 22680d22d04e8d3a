"""Activities over `core.webhooks`: the fan-out of events and the deliveries."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.keys import store_failure
from core.webhooks import DeliveryBatch, DeliveryFailed, WebhookNotFoundError, WebhookService
from workflows.webhooks import FanOut


class WebhookActivities:
    def __init__(self, webhooks: WebhookService) -> None:
        self._webhooks = webhooks

    @activity.defn(name="last_event_id")
    def last_event_id(self) -> int:
        return self._webhooks.last_event_id()

    @activity.defn(name="fan_out_webhook_events")
    def fan_out(self, request: FanOut) -> DeliveryBatch:
        """Deliveries for the events after `request.after`, waiting a while for some."""
        try:
            return self._webhooks.fan_out(request.after, request.wait_seconds, activity.heartbeat)
        except SQLAlchemyError as e:
            raise store_failure(e) from None

    @activity.defn(name="deliver_webhook")
    def deliver(self, delivery_id: int) -> bool:
        """One attempt; a refused or unanswered one fails (retryable), naming the status."""
        try:
            return self._webhooks.deliver(delivery_id)
        except DeliveryFailed as e:
            raise ApplicationError(str(e), type="DeliveryFailed") from None
        except WebhookNotFoundError as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from None
        except SQLAlchemyError as e:
            raise store_failure(e) from None

    @activity.defn(name="fail_webhook_delivery")
    def fail(self, delivery_id: int) -> None:
        try:
            self._webhooks.mark_failed(delivery_id)
        except SQLAlchemyError as e:
            raise store_failure(e) from None
