"""The dashboard in a real headless Chromium: worker rows, the profile switch, restarts, scenarios.

Runs in: any (the test process drives Debian's ``chromium`` through its
``chromedriver`` with selenium; ``make test`` installs both when
missing). The daemon is the real ``rusmd``; the page is its node
endpoint's ``/``. A screenshot of the page at the end is saved as
``dashboard.png`` in the test's tmp dir (its path is printed).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from rusmd.config.model import Profile
from rusmd.config.sizing import worker_count
from tests.integration.conftest import App, Daemon
from tests.integration.httpkit import fetch, write_http_app
from tests.integration.nodekit import endpoint_pid, scenario_app, wait_components, wait_endpoint

CPUS = 8
# Page loads, forks and reconnects on a loaded two-core machine.
PAGE_TIMEOUT_S = 30.0


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium (Debian's, with its chromedriver)."""
    driver_path = shutil.which("chromedriver")
    binary = shutil.which("chromium")
    if driver_path is None or binary is None:
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs namespaces it lacks
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# The table is redrawn every tick: read it in one script, not element by element.
READ_ROWS = """
return Array.from(document.querySelectorAll('#workers tbody tr')).map((row) => ({
  slot: row.querySelector('td.slot').textContent,
  pid: row.querySelector('td.pid').textContent,
  state: row.querySelector('td.state').textContent,
  restarts: row.querySelector('td.restarts').textContent,
}));
"""


def rows(browser: WebDriver) -> dict[str, dict[str, str]]:
    """The worker table: slot → {slot, pid, state, restarts}."""
    return {row["slot"]: row for row in browser.execute_script(READ_ROWS)}


def state(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "conn-state").get_attribute("data-state"))


def test_dashboard_shows_workers_switches_profile_and_shows_a_restart(
    app: App, start_daemon: Callable[..., Daemon], browser: WebDriver, tmp_path: Path
) -> None:
    write_http_app(app)
    daemon = start_daemon(cpus=CPUS)
    wait_endpoint(daemon)
    light, large = worker_count(Profile.LIGHT, CPUS), worker_count(Profile.MAX, CPUS)
    assert light != large
    browser.get(f"http://127.0.0.1:{app.node_port}/")

    daemon.wait_for(lambda: state(browser) == "live", PAGE_TIMEOUT_S, "the page to attach")
    workers = {row["slot"]: row for row in daemon.status()["workers"]}

    def all_rows() -> dict[str, dict[str, str]] | None:
        found = rows(browser)
        return found if len(found) == light else None

    shown = daemon.wait_for(all_rows, PAGE_TIMEOUT_S, f"{light} worker rows")
    assert {slot: row["pid"] for slot, row in shown.items()} == {
        str(slot): str(row["pid"]) for slot, row in workers.items()
    }
    for _ in range(10):
        assert fetch(app.serve_port, "GET", "/").status == 200
    daemon.wait_for(
        lambda: "2xx 10" in browser.find_element(By.ID, "t-status").text,
        PAGE_TIMEOUT_S,
        "the requests counted on the page",
    )

    browser.find_element(By.CSS_SELECTOR, 'button[data-profile="max"]').click()

    def grown() -> bool:
        found = rows(browser)
        return len(found) == large and all(row["state"] == "ready" for row in found.values())

    daemon.wait_for(grown, PAGE_TIMEOUT_S, f"{large} ready worker rows after switching to max")
    assert daemon.status()["daemon"]["profile"] == "max"
    pressed = browser.find_element(By.CSS_SELECTOR, 'button[data-profile="max"]')
    assert pressed.get_attribute("aria-pressed") == "true"

    old_pid = rows(browser)["0"]["pid"]
    os.kill(int(old_pid), signal.SIGKILL)

    def restarted() -> bool:
        row = rows(browser).get("0")
        return row is not None and row["pid"] != old_pid and row["restarts"] == "1"

    daemon.wait_for(restarted, PAGE_TIMEOUT_S, "worker 0's restart on the page")

    browser.find_element(By.ID, "run").click()
    daemon.wait_for(
        lambda: "not available" in browser.find_element(By.ID, "message").text,
        PAGE_TIMEOUT_S,
        "the scenario answer",
    )

    endpoint = endpoint_pid(daemon)
    assert endpoint is not None
    os.kill(endpoint, signal.SIGKILL)
    daemon.wait_for(lambda: state(browser) == "reconnecting", PAGE_TIMEOUT_S, "the drop to show")
    assert "retrying" in browser.find_element(By.ID, "conn-state").text
    daemon.wait_for(lambda: state(browser) == "live", PAGE_TIMEOUT_S, "the page to reattach")
    daemon.wait_for(lambda: len(rows(browser)) == large, PAGE_TIMEOUT_S, "rows after reattach")

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"dashboard screenshot: {screenshot}")


def text(browser: WebDriver, element_id: str) -> str:
    """An element's text as the page set it (the panel's heading is shown upper-case)."""
    return str(browser.find_element(By.ID, element_id).get_attribute("textContent"))


def scenario_rate(browser: WebDriver) -> float:
    """The scenario panel's rate as a number (0 while it shows none)."""
    text = browser.find_element(By.ID, "sc-rate").text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        return 0.0


def test_dashboard_runs_a_scenario_and_shows_its_live_rate(
    app: App, start_daemon: Callable[..., Daemon], browser: WebDriver, tmp_path: Path
) -> None:
    scenario_app(app)
    daemon = start_daemon(cpus=CPUS)
    wait_components(daemon)
    wait_endpoint(daemon)
    browser.get(f"http://127.0.0.1:{app.node_port}/")
    daemon.wait_for(lambda: state(browser) == "live", PAGE_TIMEOUT_S, "the page to attach")
    daemon.wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, '#scenario option[value="ws-echo"]'),
        PAGE_TIMEOUT_S,
        "the scenario list",
    )
    Select(browser.find_element(By.ID, "scenario")).select_by_value("ws-echo")
    seconds = browser.find_element(By.ID, "seconds")
    seconds.clear()
    seconds.send_keys("4")
    browser.find_element(By.ID, "run").click()

    def live_rate() -> bool:
        running = text(browser, "sc-state") == "running"
        return running and scenario_rate(browser) > 0

    daemon.wait_for(live_rate, PAGE_TIMEOUT_S, "a live non-zero rate in the scenario panel")
    assert text(browser, "sc-name") == "ws-echo"
    assert "started for 4 s" in browser.find_element(By.ID, "message").text
    daemon.wait_for(
        lambda: text(browser, "sc-state") == "done",
        PAGE_TIMEOUT_S,
        "the run to end",
    )
    assert scenario_rate(browser) > 0  # the whole run's rate
    p50, _p95, _p99 = browser.find_element(By.ID, "sc-latency").text.replace(",", "").split(" · ")
    assert float(p50) > 0
    screenshot = tmp_path / "dashboard-scenario.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"dashboard screenshot: {screenshot}")
