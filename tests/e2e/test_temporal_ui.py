"""The Temporal Web UI of `keyrotor dev`, driven by Debian's headless Chromium: an operator finds a
key's workflow by its search attributes, reads its input decoded through keyrotor's codec
endpoint, and sends `emergency_rotate` from the UI's "Send a Signal" dialog."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_dev_command import API, Dev, clean_env, start_dev, stop

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.devserver,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="Debian's chromium and chromium-driver are not installed (make test installs them as root)",
    ),
]


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    running = start_dev(tmp_path, tmp_path / ".keyrotor", clean_env(), "ui")
    try:
        yield running
    finally:
        stop(running)
        running.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # as this machine's probe runs it: no sandbox (root), and no calls out of a closed network
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1600,1200",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def rest(dev: Dev, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = httpx.request(
        method,
        f"{dev.base_url}{API}{path}",
        headers={"Authorization": f"Bearer {dev.admin_key()}"},
        timeout=30,
        **kw,
    )
    assert r.status_code < 300, r.text
    body: dict[str, Any] = r.json()
    return body


def test_an_operator_finds_reads_and_signals_a_key_in_the_ui(dev: Dev, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def page_shows(text: str) -> Any:
        return lambda d: text in d.find_element(By.TAG_NAME, "body").text

    wait = WebDriverWait(browser, 30)
    key = rest(dev, "POST", "/keys/generate", json={"type": "encryption", "owner": "team-ui"})[
        "key"
    ]
    other = rest(dev, "POST", "/keys/generate", json={"type": "signing", "owner": "team-x"})["key"]
    ui = f"http://localhost:{dev.ui_port}/namespaces/default/workflows"

    # found by its search attributes: the owner's keys, and only those
    query = urllib.parse.quote('KeyrotorOwner="team-ui" AND KeyrotorState="active"')
    browser.get(f"{ui}?query={query}")
    wait.until(page_shows(key["workflowId"]))
    assert other["workflowId"] not in browser.find_element(By.TAG_NAME, "body").text

    # its input, decoded by keyrotor's codec endpoint (encrypted in Temporal's store)
    browser.get(f"{ui}/{urllib.parse.quote(key['workflowId'], safe='')}")
    wait.until(page_shows('"rotation_interval": 2592000'))  # the policy, decoded
    # the spec comes last in the input: scroll the viewer (it draws only the lines in view)
    browser.execute_script(
        "for (const s of document.querySelectorAll('.cm-scroller')) s.scrollTop = s.scrollHeight;"
    )
    wait.until(page_shows(f'"key_id": "{key["id"]}"'))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert '"algorithm": "AES-256-GCM"' in body and '"owner": "team-ui"' in body

    # More Actions -> Send a Signal -> emergency_rotate, with the operator's reason
    more = [
        b
        for b in browser.find_elements(By.XPATH, "//button[contains(., 'More Actions')]")
        if b.is_displayed()
    ]
    more[0].click()
    item = wait.until(
        lambda d: next(
            (
                e
                for e in d.find_elements(By.XPATH, "//*[@role='menuitem']")
                if e.is_displayed() and "Send a Signal" in e.text
            ),
            None,
        )
    )
    item.click()
    modal = wait.until(
        lambda d: next(
            (
                m
                for m in d.find_elements(By.CSS_SELECTOR, "dialog#signal-confirmation-modal")
                if m.is_displayed()
            ),
            None,
        )
    )
    modal.find_element(By.XPATH, ".//button[.//input[@id='signal-select']]").click()
    # every signal is listed. The list fades in: wait until all of it is shown before reading
    # or clicking (CI once read it mid-animation, with two items not yet displayed)
    signals = {
        "acknowledge_warning",
        "emergency_rotate",
        "policy_updated",
        "resume",
        "revoke",
        "suspend",
    }

    def listed(_: Any) -> dict[str, Any] | None:
        items = modal.find_elements(By.XPATH, ".//li")
        if not items or not all(e.is_displayed() for e in items):
            return None
        return {e.text.strip(): e for e in items}

    options = wait.until(listed)
    assert signals <= options.keys()
    options["emergency_rotate"].click()
    editor = modal.find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    editor.send_keys(json.dumps({"reason": "leaked in a ticket", "actor": "ui-operator"}))
    modal.find_element(By.XPATH, ".//button[contains(., 'Submit')]").click()

    def rotated(_: Any) -> bool:
        return int(rest(dev, "GET", f"/keys/{key['id']}")["key"]["version"]) == 2

    wait.until(rotated)
    versions = rest(dev, "GET", f"/keys/{key['id']}")["key"]["versions"]
    assert {v["version"]: v["state"] for v in versions} == {1: "compromised", 2: "active"}
    records = rest(dev, "GET", "/audit", params={"objectId": key["id"]})["records"]
    emergency = next(r for r in records if r["action"] == "key.emergency_rotated")
    assert (emergency["actor"], emergency["reason"]) == (
        "ui-operator",
        "compromise: leaked in a ticket",
    )
