"""The live page's search box in a real browser (Debian's Chromium through Playwright) against
``pulse api`` over the session's Redis and OpenSearch.

The dataset of tests/pulse/api/test_search_api.py (dead letters, alerts and windows of six
hours, indexed by the indexer's sink) is searched as a person would: a kind, a time range and
a text; the rows must be the documents computed from the dataset, newest first, twenty at a
time (More adds the next twenty); a search the API refuses says why; nothing is
wider than a 390x844 phone. Screenshots go to ``test-artifacts/page/{test}/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from pulse.local.stack import free_port
from tests.pulse.api.test_page import CHROMIUM_ARGS, ROOT, poll, watch_errors
from tests.pulse.api.test_search_api import dataset, index, newest_first, settings_for, sources

os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
from playwright.sync_api import Page, sync_playwright

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(
    redis_url: str, search_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    prefix = f"pagesearch{os.getpid()}"
    settings = settings_for(prefix, search_url)
    documents = dataset(prefix)
    asyncio.run(index(settings, documents))
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    env = {
        **os.environ,
        **settings.env(),
        "PULSE_REDIS_URL": redis_url,
        "PULSE_REDIS_PREFIX": prefix,
        "PULSE_API_PORT": str(port),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pulse", "api"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pulse api did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield url, {kind: sources(docs) for kind, docs in documents.items()}
    finally:
        process.terminate()
        process.wait(10)


def rows(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#search-results tbody tr", "rows => rows.map(row => row.dataset.id)"
    )


def search(page: Page, kind: str, since: str, text: str) -> None:
    page.select_option("#search-kind", kind)
    page.select_option("#search-since", since)
    page.fill("#search-q", text)
    page.click("#search-form button[type=submit]")


def test_the_search_box_finds_the_indexed_documents_newest_first(
    served: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    url, docs = served
    artifacts = ROOT / "test-artifacts" / "page" / "search"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed (scripts/setup installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = watch_errors(page)
            page.goto(url + "/")
            page.wait_for_selector("#app", state="visible")

            want = [d["id"] for d in newest_first([
                d for d in docs["dead-letters"] if "number" in d["detail"]
            ])]  # fmt: skip
            assert len(want) > 20
            search(page, "dead-letters", "1d", "number")
            poll(lambda: rows(page) == want[:20], "the first twenty dead letters")
            note = page.text_content("#search-note") or ""
            assert note.startswith(f"{len(want)} found, 20 shown")
            page.screenshot(path=artifacts / "1-dead-letters.png", full_page=True)
            page.click("#search-more")
            poll(lambda: rows(page) == want[:40], "forty dead letters")
            details = page.eval_on_selector_all(
                "#search-results tbody td[data-field=detail]",
                "cells => cells.map(c => c.textContent)",
            )
            assert set(details) == {"value is not a number"}

            every = [d["id"] for d in newest_first(docs["windows"])]
            search(page, "windows", "", "")
            poll(lambda: rows(page) == every[:20], "the newest windows")
            means = page.eval_on_selector_all(
                "#search-results tbody td[data-field=mean]",
                "cells => cells.map(c => Number(c.dataset.value))",
            )
            assert means == [d["mean"] for d in newest_first(docs["windows"])[:20]]
            page.screenshot(path=artifacts / "2-windows.png", full_page=True)

            # Nothing older than an hour: the dataset ends two hours ago.
            search(page, "alerts", "1h", "")
            poll(lambda: (page.text_content("#search-note") or "").startswith("0 found"), "none")
            assert rows(page) == []
            assert page.is_hidden("#search-more")
            assert errors == []
            # A search the API refuses says why, in the note.
            search(page, "alerts", "1d", "x" * 300)
            poll(lambda: "search failed: q:" in (page.text_content("#search-note") or ""), "why")

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(url + "/")
            phone.wait_for_selector("#app", state="visible")
            search(phone, "dead-letters", "7d", "number")
            poll(lambda: len(rows(phone)) == 20, "results on a phone")
            width = phone.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 390, width
            phone.screenshot(path=artifacts / "3-phone.png", full_page=True)
        finally:
            browser.close()
