"""The inspection page in a real headless Chromium against the real API server.

The API runs as ``crossrec serve`` in a subprocess (uvicorn, uvloop, httptools: the production
path) on a free port, reading the session Redis; data is written with ``RecWriter``. Selenium
drives Debian's chromium through chromedriver.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, free_port
from test_client import MODEL, Fixture, populate

from crossrec.keys import KeySchema
from crossrec.publish import RecWriter
from crossrec.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/serving_page.png")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def feast_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The API's work dir: where Feast's registry lives (the online store is the session Redis)."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def server(services_settings: Settings, feast_work: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``crossrec serve`` in a subprocess, configured through CROSSREC_* like a deployment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")}
    env |= {
        "CROSSREC_CONFIG": str(REPO_ROOT / "tests" / "data" / "empty.yaml"),
        "CROSSREC_REDIS__URL": services_settings.redis.url,
        "CROSSREC_KEY_PREFIX": services_settings.key_prefix,
        "CROSSREC_DOMAINS": '["art", "office"]',
        "CROSSREC_WORK_DIR": str(feast_work),
    }
    log = tmp_path_factory.mktemp("api") / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crossrec.cli", "serve", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"API did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is missing: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="crossrec-chrome-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def world(redis_client, services_settings: Settings) -> Fixture:
    return populate(RecWriter(redis_client, KeySchema(services_settings.key_prefix)))


def wait_state(driver, state: str, timeout: float = 15.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == state)


def rows(driver, table_id: str) -> list[list[str]]:
    return [
        [cell.text for cell in row.find_elements("tag name", "td")]
        for row in driver.find_elements("css selector", f"#{table_id} tbody tr")
    ]


def pick(driver, domain: str, user: str, k: int | None = None) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "domain")).select_by_visible_text(domain)
    box = driver.find_element("id", "user")
    box.clear()
    box.send_keys(user)
    if k is not None:
        kbox = driver.find_element("id", "k")
        kbox.clear()
        kbox.send_keys(str(k))
    driver.find_element("id", "show").click()


def test_page_shows_history_beside_explained_recommendations(browser, server: str, world: Fixture) -> None:
    browser.get(server + "/")
    wait_state(browser, "idle")
    assert "Redis up" in browser.find_element("id", "health").text and MODEL in browser.find_element("id", "health").text
    # The user picker offers the users that have a list in the chosen domain.
    options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#user-list option")]
    assert options == [world.user]

    pick(browser, "office", world.user)
    wait_state(browser, "ready")

    history = rows(browser, "history")
    newest_first = list(reversed(world.history))
    assert len(history) == len(newest_first)
    for cells, event in zip(history, newest_first):
        when, domain, event_type, item = cells
        assert domain == event.domain and event_type == event.event_type
        assert item.splitlines() == [world.titles[event.item_id], event.item_id]
        assert when.endswith("UTC") and when.startswith("2020-09-13")  # 1_600_000_000 s

    recs = rows(browser, "recs")
    assert [r[0] for r in recs] == [str(i) for i in range(1, 11)]
    assert [r[1].splitlines() for r in recs] == [[world.titles[i], i] for i in world.rec_ids]
    assert [float(r[2].split()[0]) for r in recs] == pytest.approx(world.scores, abs=1e-4)
    assert [r[3] for r in recs] == [f"because you bought {world.titles[b]}" for b in world.because]
    assert not browser.find_element("id", "fallback").is_displayed()
    meta = browser.find_element("id", "recs-meta").text
    assert MODEL in meta and "batch" in meta and "s ago" in meta

    # History items that explain a recommendation are marked, with how many they explain.
    marks = {
        row.get_attribute("data-item-id"): row.get_attribute("title")
        for row in browser.find_elements("css selector", "#history tbody tr.explains")
    }
    assert marks == {b: f"explains {world.because.count(b)} recommendations" for b in set(world.because)}

    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_page_flags_fallback_and_deep_links(browser, server: str, world: Fixture) -> None:
    browser.get(f"{server}/?domain=office&user={world.new_user}&k=3")
    wait_state(browser, "ready")
    assert browser.find_element("id", "fallback").is_displayed()
    assert [r[1].splitlines()[1] for r in rows(browser, "recs")] == world.popular_ids[:3]
    assert all(r[3] == "popular in this domain" for r in rows(browser, "recs"))
    assert rows(browser, "history") == [] and browser.find_element("id", "history-empty").is_displayed()


def test_page_validates_k_and_shows_api_errors(browser, server: str, world: Fixture) -> None:
    browser.get(server + "/")
    wait_state(browser, "idle")
    pick(browser, "office", world.user, k=500)  # the form knows max_k from /domains: not sent
    assert browser.execute_script("return document.getElementById('picker').checkValidity()") is False
    assert browser.find_element("tag name", "body").get_attribute("data-state") == "idle"

    # A hand-edited link bypasses the form; the API's 422 message is shown, not swallowed.
    browser.get(f"{server}/?domain=office&user={world.user}&k=500")
    wait_state(browser, "error")
    error = browser.find_element("id", "error")
    assert error.is_displayed() and "k must be an integer between 1 and 100, got 500" in error.text


def test_real_server_rejects_oversized_requests_with_4xx(server: str) -> None:
    """Beyond what httpx will send: a 200 KB request line straight over a socket."""
    host, port = server.removeprefix("http://").split(":")
    request = f"GET /recommendations/office/{'u' * 200_000}?k=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]
    assert len(reply) < 2000


def test_deep_link_shows_features_and_which_model_and_source_wrote_the_list(
    browser, server: str, world: Fixture, services_settings: Settings, feast_work: Path
) -> None:
    from test_feast import push_user

    from crossrec.features.store import apply

    store = apply(services_settings.model_copy(update={"work_dir": feast_work}))
    push_user(store, world.user, 7, ["o3", "o2", "o1"])

    browser.get(f"{server}/?domain=office&user={world.user}")
    wait_state(browser, "ready")
    assert browser.find_element("id", "user").get_attribute("value") == world.user  # the link opened that user
    assert [r[1].splitlines()[1] for r in rows(browser, "recs")] == world.rec_ids
    assert browser.find_element("id", "recs-source").text == "batch"
    assert browser.find_element("id", "recs-model").text == MODEL
    assert browser.find_element("id", "recs-current").text == MODEL

    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda d: d.find_element("id", "features").get_attribute("data-state") == "ready")
    features = {
        row.get_attribute("data-feature"): row.find_element("tag name", "td").text
        for row in browser.find_elements("css selector", "#features tbody tr")
    }
    assert features["events"] == "7"
    assert features["recent items"] == "o3 (office), o2 (office), o1 (office)"
    assert features["user vector"] == "2 dims"

    # a user Feast knows nothing about: the panel says so, the lists still show
    browser.get(f"{server}/?domain=office&user={world.new_user}")
    wait_state(browser, "ready")
    WebDriverWait(browser, 60).until(lambda d: d.find_element("id", "features").get_attribute("data-state") == "ready")
    assert browser.find_element("id", "features-note").text == "No features stored for this user."
    assert browser.find_element("id", "recs-source").text == "popular"


def test_the_page_shows_the_route_a_routed_model_took(browser, server: str, world: Fixture, services_settings: Settings) -> None:
    from crossrec.publish import make_rec_list

    writer = RecWriter.from_settings(services_settings)
    try:
        writer.write_recs("office", "ROUTED", make_rec_list(["o1", "o2"], [0.9, 0.4], MODEL, route="source_cooc"))
    finally:
        writer.close()
    browser.get(f"{server}/?domain=office&user=ROUTED")
    wait_state(browser, "ready")
    assert browser.find_element("id", "recs-route-wrap").is_displayed()
    assert browser.find_element("id", "recs-route").text == "source_cooc"
    assert "route source_cooc" in browser.find_element("id", "recs-meta").text
    browser.get(f"{server}/?domain=office&user={world.user}")  # a list without a route: none shown
    wait_state(browser, "ready")
    assert not browser.find_element("id", "recs-route-wrap").is_displayed()
