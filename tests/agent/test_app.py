"""HTTP behaviour of the agent: content negotiation, gzip, health, index, TLS and basic auth."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import ssl
import subprocess
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from prometheus_client.core import Metric

from dcwatch.agent.app import make_app
from dcwatch.agent.config import AgentConfig
from dcwatch.exporters.base import Collector
from dcwatch.exposition import Families, MetricSpec, wants_openmetrics
from dcwatch.webconfig import load_web_config, make_ssl_context

TEMP = MetricSpec("dcwatch_test_temp_celsius", "a temperature", ("sensor",))
ENERGY = MetricSpec("dcwatch_test_energy_joules_total", "an energy counter", kind="counter")


class Fixed(Collector):
    name = "fixed"

    def collect(self) -> Iterable[Metric]:
        f = Families()
        f.add(TEMP, 42.5, "cpu0")
        f.add(ENERGY, 1234.0)
        return f


class Broken(Collector):
    name = "broken"

    def collect(self) -> Iterable[Metric]:
        raise RuntimeError("boom")


def app_with(config: AgentConfig | None = None) -> web.Application:
    cfg = config or AgentConfig()
    return make_app(cfg, collectors=[Fixed(cfg), Broken(cfg)])


async def test_text_format_by_default(aiohttp_client) -> None:
    client = await aiohttp_client(app_with())
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    body = await r.text()
    assert 'dcwatch_test_temp_celsius{sensor="cpu0"} 42.5' in body
    assert "dcwatch_test_energy_joules_total 1234.0" in body
    assert 'dcwatch_scrape_collector_success{collector="broken"} 0.0' in body
    assert 'dcwatch_scrape_collector_success{collector="fixed"} 1.0' in body
    assert "# EOF" not in body


async def test_openmetrics_when_asked(aiohttp_client) -> None:
    client = await aiohttp_client(app_with())
    # What Prometheus 2.x sends.
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    r = await client.get("/metrics", headers={"Accept": accept})
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    body = await r.text()
    assert body.endswith("# EOF\n")
    assert "# UNIT dcwatch_test_temp_celsius celsius" in body
    assert "dcwatch_test_energy_joules_total 1234.0" in body


def test_accept_parsing() -> None:
    assert wants_openmetrics("application/openmetrics-text; version=1.0.0")
    assert not wants_openmetrics("application/openmetrics-text;q=0,text/plain")
    assert not wants_openmetrics("text/plain;version=0.0.4")
    assert not wants_openmetrics("")


async def test_gzip_when_asked(aiohttp_client) -> None:
    client = await aiohttp_client(app_with())
    r = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert r.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(await r.read()).decode()
    assert "dcwatch_test_temp_celsius" in text
    r = await client.get("/metrics", headers={"Accept-Encoding": "identity"}, auto_decompress=False)
    assert "Content-Encoding" not in r.headers


async def test_healthz_and_index(aiohttp_client) -> None:
    client = await aiohttp_client(app_with())
    await client.get("/metrics")  # run the collectors once
    r = await client.get("/healthz")
    assert r.status == 200
    status = json.loads(await r.text())
    assert status["status"] == "degraded" or status["failing"] == []
    assert status["collectors"] == 2
    page = await (await client.get("/")).text()
    assert "<td>fixed</td><td>ok</td>" in page
    assert "RuntimeError: boom" in page


# --- basic auth and TLS through a real exporter-toolkit style web-config file ---------------


def write_web_config(tmp_path: Path, extra: str = "") -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  prom: {hashed}\n{extra}")
    return p


def basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


async def test_basic_auth(aiohttp_client, tmp_path: Path, caplog) -> None:
    cfg = AgentConfig(web_config=write_web_config(tmp_path))
    client = await aiohttp_client(app_with(cfg))
    caplog.set_level(logging.DEBUG)
    assert (await client.get("/metrics")).status == 401
    r = await client.get("/metrics", headers=basic("prom", "wrong-password"))
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert (await client.get("/metrics", headers=basic("nobody", "s3cret"))).status == 401
    r = await client.get("/metrics", headers=basic("prom", "s3cret"))
    assert r.status == 200
    assert "dcwatch_test_temp_celsius" in await r.text()
    # Cached verification still rejects a wrong password for a known user.
    assert (await client.get("/metrics", headers=basic("prom", "s3cretX"))).status == 401
    assert "wrong-password" not in caplog.text and "s3cret" not in caplog.text


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"openssl cannot make a test certificate: {e}")
    return cert, key


async def test_tls_and_basic_auth_on_a_real_socket(tmp_path: Path, unused_tcp_port: int) -> None:
    cert, key = make_cert(tmp_path)
    wc_path = write_web_config(
        tmp_path, f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
    )
    cfg = AgentConfig(web_config=wc_path)
    wc = load_web_config(wc_path)
    runner = web.AppRunner(app_with(cfg))
    await runner.setup()
    site = web.TCPSite(
        runner, "127.0.0.1", unused_tcp_port, ssl_context=make_ssl_context(wc.tls, wc_path)
    )
    await site.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{unused_tcp_port}/metrics"
        async with aiohttp.ClientSession() as s:
            async with s.get(url, ssl=client_ctx) as r:
                assert r.status == 401
            async with s.get(url, ssl=client_ctx, headers=basic("prom", "s3cret")) as r:
                assert r.status == 200
                assert "dcwatch_test_temp_celsius" in await r.text()
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                async with s.get(url.replace("https", "http")) as r:
                    await asyncio.sleep(0)
    finally:
        await runner.cleanup()
