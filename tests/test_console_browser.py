"""The console in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromium-driver, against a real admin API (``revoker api`` under uvicorn) and a real
Celery worker on a throwaway Redis.

Screenshots are saved as test artifacts under ``artifacts/console/`` (gitignored; override with
``REVOKER_TEST_ARTIFACTS``). The test is skipped, with the command that installs them, when the
two Debian packages are missing (``.ci/run`` and ``make test`` install them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from celery_helpers import WorkerProcess, seed_sessions, start_worker, worker_env
from conftest import make_settings
from revoker.api import ADMIN_SCOPE
from revoker.jobs import enqueue_user_revocation
from revoker.localredis import LocalRedis, free_port
from revoker.settings import RevokerSettings
from revoker.tokens import create_access_token

pytestmark = [pytest.mark.celery]

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("REVOKER_TEST_ARTIFACTS", ROOT / "artifacts")) / "console"
#: acme's sessions: enough for several chunks at CHUNK, few enough to stay fast.
SESSIONS = 600
CHUNK = 50
#: Generous waits: the host is shared.
WAIT = 30

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  # only once the browser is known to be there
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    """This module's Redis: data, broker and result backend."""
    with LocalRedis() as lr:
        yield lr


@pytest.fixture(scope="module")
def stack_settings(server: LocalRedis) -> RevokerSettings:
    """What the worker, the admin API and the test share (a Redis timeout for a loaded host:
    the production default of 0.1 s makes a busy CI machine's sign-in a 503)."""
    return make_settings(
        redis_url=server.url,
        chunk_size=CHUNK,
        visibility_timeout=30,
        redis_timeout=5.0,
        redis_connect_timeout=5.0,
    )


@pytest.fixture(scope="module")
def worker(stack_settings: RevokerSettings, server: LocalRedis) -> Iterator[WorkerProcess]:
    """A real ``celery -A revoker.worker worker``."""
    w = start_worker(worker_env(stack_settings, server.url), concurrency=2)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def admin_url(
    stack_settings: RevokerSettings, server: LocalRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real admin API process: ``revoker api`` (uvicorn) on a free loopback port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(worker_env(stack_settings, server.url))
    revoker = Path(sys.executable).parent / "revoker"
    log_path = tmp_path_factory.mktemp("admin-api") / "api.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(revoker), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code in (200, 503):
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"revoker api did not start: {log_path.read_text()}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Debian chromium through Debian's chromedriver (nothing downloaded)."""
    # Both paths are given, so Selenium Manager has nothing to fetch; offline, it never could.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-prefers-reduced-motion",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_for(driver: WebDriver, what: str, condition: object) -> None:
    try:
        # The page replaces what it updates: an element read mid-update is looked up again.
        WebDriverWait(
            driver,
            WAIT,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition)  # type: ignore[arg-type]
    except Exception:
        shot(driver, f"failed-{what}")
        raise


def text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def text_when_shown(driver: WebDriver, what: str, css: str) -> str:
    """The element's text once the page a click navigated to has it (a click does not wait)."""
    wait_for(driver, what, lambda d: d.find_elements(By.CSS_SELECTOR, css))
    return text(driver, css)


def mark_page(driver: WebDriver) -> None:
    """Tag the loaded document: the tag survives only as long as the page is not reloaded."""
    driver.execute_script("window.__consoleTestMark = 'same page';")


def same_page(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return window.__consoleTestMark === 'same page';"))


def test_operator_revokes_a_tenant_in_the_browser(
    browser: WebDriver,
    admin_url: str,
    worker: WorkerProcess,
    stack_settings: RevokerSettings,
    server: LocalRedis,
) -> None:
    """Sign in, dry run, confirm a real tenant revocation, watch it reach done without reload,
    find its audit entry, check a revoked token; refused everywhere once signed out."""
    client = redis.Redis.from_url(server.url)
    seed_sessions(client, stack_settings, "acme", SESSIONS, users=120)
    seed_sessions(client, stack_settings, "globex", 40)
    client.close()
    victim, _ = create_access_token("u1", tenant_id="acme", settings=stack_settings)
    admin, _ = create_access_token("ops-alice", scopes=[ADMIN_SCOPE], settings=stack_settings)
    b = browser

    # Signed out, every page sends the browser to the sign-in page.
    b.get(f"{admin_url}/console/jobs")
    assert b.current_url.endswith("/console/login")
    b.find_element(By.ID, "token").send_keys(admin)
    shot(b, "01-sign-in")
    b.find_element(By.ID, "sign-in").click()
    wait_for(b, "signed-in", lambda d: d.current_url.endswith("/console/jobs"))
    assert text(b, "#identity") == "ops-alice"

    # A dry run first: its page shows the count once the worker has counted, without reload.
    b.find_element(By.LINK_TEXT, "Revoke").click()
    text_when_shown(b, "revoke-page", "#tenant-id")
    b.find_element(By.ID, "tenant-id").send_keys("acme")
    b.find_element(By.ID, "tenant-reason").send_keys("credential leak")
    b.find_element(By.ID, "tenant-dry-run").click()
    wait_for(b, "dry-run-page", lambda d: "/console/jobs/" in d.current_url)
    dry_url = b.current_url
    mark_page(b)
    wait_for(
        b, "dry-run-count", lambda d: f"matched {SESSIONS} sessions" in text(d, "#dry-run-count")
    )
    assert same_page(b)
    assert b.find_element(By.ID, "confirm-fields").is_enabled()
    shot(b, "02-dry-run")

    # Confirm by typing the tenant id (a wrong one is refused first).
    b.find_element(By.ID, "confirm").send_keys("acme-typo")
    b.find_element(By.ID, "confirm-button").click()
    assert "type 'acme' exactly" in text_when_shown(b, "confirm-refused", "#error-message")
    b.back()
    wait_for(b, "confirm-again", lambda d: d.find_element(By.ID, "confirm-fields").is_enabled())
    field = b.find_element(By.ID, "confirm")
    field.clear()
    field.send_keys("acme")
    b.find_element(By.ID, "confirm-button").click()
    wait_for(
        b, "job-page", lambda d: d.current_url != dry_url and "/console/jobs/" in d.current_url
    )
    assert "dry run" not in text(b, "#job")
    job_id = b.current_url.rsplit("/", 1)[1]
    mark_page(b)
    wait_for(b, "job-done", lambda d: "done" in text(d, '#job [data-field="status"]'))
    assert same_page(b), "the job page reloaded instead of updating in place"
    assert text(b, '[data-field="families_revoked"]') == str(SESSIONS)
    chunks_done, chunks_total = text(b, '[data-field="chunks"]').split("/")
    assert chunks_done == chunks_total
    assert int(chunks_total) > 1
    assert text(b, '[data-field="parked"]') == "none"
    shot(b, "03-job-done")

    # The jobs list shows both jobs, live, and filters by tenant and actor.
    b.get(f"{admin_url}/console/jobs?tenant=acme&actor=ops-alice")
    rows = b.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]")
    assert len(rows) == 2
    shot(b, "04-jobs")

    # The job's audit entries (one per chunk that revoked), by the signed-in operator, add up.
    b.get(f"{admin_url}/console/jobs/{job_id}")
    b.find_element(By.ID, "audit-link").click()
    text_when_shown(b, "audit", "#audit")
    entries = b.find_elements(By.CSS_SELECTOR, "#audit tbody tr[data-entry]")
    assert entries
    assert all("ops-alice" in row.text and "credential leak" in row.text for row in entries)
    counts = [re.search(r"count=(\d+)", row.text) for row in entries]
    assert sum(int(found.group(1)) for found in counts if found) == SESSIONS
    shot(b, "05-audit")

    # A token of the tenant issued before the revocation is revoked, and says by which rule.
    b.find_element(By.LINK_TEXT, "Check a token").click()
    text_when_shown(b, "check-page", "#check-token")
    b.find_element(By.ID, "check-token").send_keys(victim)
    b.find_element(By.ID, "check-button").click()
    verdict = text_when_shown(b, "verdict", "#verdict")
    assert verdict.startswith("✗ Revoked (rule: ")
    assert "credential leak" in text(b, "#check-result")
    shot(b, "06-check")

    # The jobs list follows a job enqueued elsewhere (the CLI, the API) without reload.
    b.get(f"{admin_url}/console/jobs")
    mark_page(b)
    other = enqueue_user_revocation(
        "u3", tenant_id="globex", reason="phished", actor="ops-bob", settings=stack_settings
    )
    row = f'#jobs tr[data-job="{other}"]'
    wait_for(b, "list-live", lambda d: "done" in text(d, row) and "ops-bob" in text(d, row))
    assert same_page(b), "the jobs list reloaded instead of updating in place"

    b.find_element(By.LINK_TEXT, "Health").click()
    assert "ok" in text_when_shown(b, "health", "#overall")
    assert worker.hostname in text(b, "#workers")
    shot(b, "07-health")

    # Signed out: pages go back to the sign-in page, the JSON endpoint answers 401.
    b.find_element(By.CSS_SELECTOR, ".signout button").click()
    wait_for(b, "signed-out", lambda d: d.current_url.endswith("/console/login"))
    b.get(f"{admin_url}/console/jobs/{job_id}")
    assert b.current_url.endswith("/console/login")
    status = b.execute_script(
        "return fetch('/console/api/jobs', {credentials: 'same-origin'}).then(r => r.status);"
    )
    assert status == 401
