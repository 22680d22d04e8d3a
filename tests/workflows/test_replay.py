"""Replay recorded histories: a workflow change that would break running keys fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from core.codec import data_converter
from tests.fixtures.temporal import TEST_KEYRING
from worker.main import SANDBOX
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.master_key import MasterKeyRotationWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_committed() -> None:
    names = {p.stem for p in HISTORIES}
    assert names >= {
        "key_lifecycle_full",
        "key_continued_as_new",
        "credential_lifecycle_full",
        "handle_lifecycle_full",
        "master_key_rotation",
    }, "missing recorded histories: run python -m tests.workflows.record_histories"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replay(path: Path) -> None:
    history = WorkflowHistory.from_json("replayed", path.read_text())
    assert len(history.events) > 40
    replayer = Replayer(
        workflows=[
            KeyLifecycleWorkflow,
            CredentialLifecycleWorkflow,
            HandleLifecycleWorkflow,
            MasterKeyRotationWorkflow,
        ],
        data_converter=data_converter(TEST_KEYRING),
        workflow_runner=SANDBOX,  # as the worker runs them
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
