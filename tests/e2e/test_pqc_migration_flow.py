"""A rotation that the PQC policy migrates shows in the Temporal UI: the key workflow's
`KeyrotorAlgorithm` search attribute follows the active version's algorithm."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from core.policy import default_policy_path
from tests.e2e.conftest import build_stack
from workflows.types import SA_ALGORITHM

KEYS = "/api/key-management/keys"


async def test_the_algorithm_search_attribute_follows_a_migration(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    shipped = default_policy_path().read_text()
    assert "[pqc_policy]\nenabled = false" in shipped
    policy = tmp_path / "keyrotor.toml"
    policy.write_text(
        shipped.replace("[pqc_policy]\nenabled = false", "[pqc_policy]\nenabled = true")
    )
    async with build_stack(dev_env, tmp_path, config=policy) as stack:
        r = await stack.http.post(
            f"{KEYS}/generate", json={"type": "signing"}, headers=stack.auth()
        )
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        assert key["algorithm"] == "RSA-2048"
        handle = stack.client.get_workflow_handle(key["workflowId"])
        assert (await handle.describe()).typed_search_attributes.get(SA_ALGORITHM) == "RSA-2048"
        message = {"message": base64.b64encode(b"release 1.0").decode()}
        old = (
            await stack.http.post(f"{KEYS}/{key['id']}/sign", json=message, headers=stack.auth())
        ).json()

        r = await stack.http.post(
            f"{KEYS}/{key['id']}/rotate", json={"reason": "pqc drill"}, headers=stack.auth()
        )
        assert r.status_code == 200, r.text
        assert r.json()["key"]["algorithm"] == "Ed25519+ML-DSA-65"  # hybrid before the deadline
        shown = (await handle.describe()).typed_search_attributes.get(SA_ALGORITHM)
        assert shown == "Ed25519+ML-DSA-65"
        # operators find it by the new algorithm (visibility is eventually consistent)
        query = f'KeyrotorAlgorithm = "Ed25519+ML-DSA-65" AND WorkflowId = "{key["workflowId"]}"'
        for _ in range(100):
            if [w.id async for w in stack.client.list_workflows(query)]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the workflow is not found by its new algorithm")
        # the RSA signature of the version in grace still verifies
        r = await stack.http.post(
            f"{KEYS}/{key['id']}/verify",
            json={**message, "signature": old["signature"]},
            headers=stack.auth(),
        )
        assert r.status_code == 200 and r.json()["valid"] is True, r.text
        await handle.terminate("test over")
