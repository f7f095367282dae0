"""The indexer's sink and the search API on an OpenSearch that needs TLS and a password.

The session's OpenSearch behind tests/helpers/search_proxy.py (HTTPS with a certificate of
the test's CA, HTTP basic authentication as the security plugin asks for it): with
``PULSE_SEARCH_CAFILE`` and the password in ``PULSE_SEARCH_URL`` documents are indexed and
searched; a wrong password is ``refused_by_target`` (401), retried, never shown, and
everything is written once the password is right; without the CA the handshake fails and
the sink waits. The password never appears in what the sink says.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pulse.api._search import search_answer
from pulse.search.client import search_client
from pulse.search.documents import alert_document
from pulse.settings import Settings, SettingsError
from pulse.sinks.search import SearchSink
from tests.helpers.alerts import window_alert
from tests.helpers.search_proxy import SearchProxy
from tests.helpers.tls import CertificateAuthority

pytestmark = pytest.mark.integration

PASSWORD = "s3cret@pulse:x"


def settings_for(url: str, prefix: str, cafile: Path | None) -> Settings:
    env = {
        "PULSE_SEARCH_URL": url,
        "PULSE_SEARCH_PREFIX": prefix,
        "PULSE_SEARCH_REPLICAS": "0",
        "PULSE_SEARCH_RETENTION_DAYS": "0",
    }
    if cafile is not None:
        env["PULSE_SEARCH_CAFILE"] = str(cafile)
    return Settings.from_env(env)


def test_the_ca_file_goes_with_an_https_url_and_the_password_is_never_shown(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    with pytest.raises(SettingsError, match="PULSE_SEARCH_CAFILE is set, but PULSE_SEARCH_URL"):
        settings_for("http://127.0.0.1:9200", "p", ca)
    settings = settings_for("https://pulse:pass%40word@127.0.0.1:9200", "p", None)
    assert settings.shown()["PULSE_SEARCH_URL"] == "https://pulse:<redacted>@127.0.0.1:9200"
    assert "pass@word" not in repr(settings)
    assert settings.redact("refused pass@word") == "refused <redacted>"


async def _write(sink: SearchSink, documents: list, timeout: float = 30.0) -> None:
    await asyncio.wait_for(sink.write_records(documents, [b"d"] * len(documents)), timeout)


def test_indexing_and_searching_over_tls_with_a_password(
    search_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "tls", "pulse-test-ca")
    proxy = SearchProxy(search_url, ca.issue("opensearch", server=True), "pulse", PASSWORD)
    proxy.start()
    try:
        asyncio.run(_scenario(proxy, ca.cert, topic_prefix))
    finally:
        proxy.stop()


async def _scenario(proxy: SearchProxy, cafile: Path, prefix: str) -> None:
    documents = [
        alert_document(window_alert("hot", f"{prefix}-d", "t", "10s", 10, k, "firing", 90.0).json())
        for k in range(5)
    ]
    # A wrong password: refused by the target, retried, the password never said.
    wrong = SearchSink(settings_for(proxy.url("wrong-one"), prefix, cafile), "alerts")
    await wrong.start()
    try:
        writing = asyncio.create_task(_write(wrong, documents))
        deadline = time.monotonic() + 20
        while wrong.health.state != "refused_by_target":
            assert time.monotonic() < deadline, wrong.health.document()
            assert not writing.done(), writing
            await asyncio.sleep(0.05)
        assert "401" in (wrong.health.reason or "")
        assert "wrong-one" not in (wrong.health.reason or "")
        assert PASSWORD not in (wrong.health.reason or "")
        proxy.password = "wrong-one"  # the operator fixes it on the server's side
        await writing
        assert wrong.health.state == "ok" and wrong.indexed == len(documents)
    finally:
        await wrong.stop()
        proxy.password = PASSWORD

    # Without the CA the server's certificate is not trusted: the sink waits, nothing lost.
    untrusting = SearchSink(settings_for(proxy.url(), prefix, None), "alerts")
    await untrusting.start()
    try:
        writing = asyncio.create_task(_write(untrusting, documents))
        deadline = time.monotonic() + 20
        while untrusting.health.state != "waiting":
            assert time.monotonic() < deadline, untrusting.health.document()
            await asyncio.sleep(0.05)
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusting.health.reason or "")
        writing.cancel()
    finally:
        await untrusting.stop()

    # The right password and the CA: indexed, and found by the search API's code.
    settings = settings_for(proxy.url(), prefix, cafile)
    sink = SearchSink(settings, "alerts")
    await sink.start()
    try:
        await _write(sink, documents)
    finally:
        await sink.stop()
    client = search_client(settings)
    try:
        await client.indices.refresh(index=f"{prefix}-alerts")
        answer = await search_answer(settings, client, "alerts", {"limit": "10"})
    finally:
        await client.close()
    assert sorted(doc["id"] for doc in answer["documents"]) == sorted(d.id for d in documents)
