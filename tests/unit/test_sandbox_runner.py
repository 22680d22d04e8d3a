"""The worker's sandbox runner (`worker.main.SANDBOX`) answers what the SDK's own runner answers,
with the shortcuts it takes (see `worker.main._LeanInstance`)."""

from __future__ import annotations

import dataclasses

import temporalio.workflow
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import CommandType
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, WorkflowSerializationContext
from temporalio.worker import WorkflowInstanceDetails
from temporalio.worker._command_aware_visitor import CommandInfo
from temporalio.worker.workflow_sandbox._runner import _fake_info, _Instance

from worker.main import SANDBOX, _LeanInstance
from workflows.key_lifecycle import KeyLifecycleWorkflow

WORKFLOW_ID = "keyrotor/key/dev/key_sandboxrunner"


async def test_the_serialization_context_is_the_sdks() -> None:
    details = WorkflowInstanceDetails(
        payload_converter_factory=DataConverter.default._new_payload_converter,
        failure_converter_class=DataConverter.default.failure_converter_class,
        interceptor_classes=[],
        defn=temporalio.workflow._Definition.must_from_class(KeyLifecycleWorkflow),
        info=dataclasses.replace(_fake_info, workflow_id=WORKFLOW_ID),
        randomness_seed=-1,
        extern_functions={},
        disable_eager_activity_execution=False,
        worker_level_failure_exception_types=[],
        patch_activation_callback=None,
        last_completion_result=Payloads(),
        last_failure=Failure(),
    )
    instance = SANDBOX.create_instance(details)
    assert isinstance(instance, _LeanInstance)
    expected = WorkflowSerializationContext(namespace=_fake_info.namespace, workflow_id=WORKFLOW_ID)
    for info in (
        None,
        CommandInfo(CommandType.COMMAND_TYPE_SCHEDULE_ACTIVITY_TASK, 7),  # not pending: default
        CommandInfo(CommandType.COMMAND_TYPE_START_TIMER, 1),
    ):
        assert instance.get_serialization_context(info) == expected
        # the SDK's own way, through the sandbox
        assert _Instance.get_serialization_context(instance, info) == expected
        # the external storage context: this workflow, as the SDK answers it
        store_context = instance.get_external_store_context(info)
        assert store_context == _Instance.get_external_store_context(instance, info)
        assert store_context.target is not None and store_context.target.id == WORKFLOW_ID
