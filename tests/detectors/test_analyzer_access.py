"""The analyzer's access control: basic auth and TLS from ``--web-config`` on every endpoint,
and refusal of cross-origin state changes (CSRF) with or without auth."""

from __future__ import annotations

import base64
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import numpy as np
import pytest

from dcwatch.detectors.config import AnalyzerConfig, load_analyzer_config
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.sources.base import TargetStatus
from dcwatch.detectors.sources.queries import NamedQuery
from dcwatch.detectors.web.app import ANALYZER, make_app
from dcwatch.webconfig import load_web_config

PATHS = ("/", "/metrics", "/healthz", "/readyz", "/api/nodes")
NODE = "node-1:9478"


class OneNode:
    """A source with one node and a few rows of data."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def with_queries(self, queries: Sequence[NamedQuery]) -> OneNode:
        return self

    def target_status(self) -> list[TargetStatus]:
        return []

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        times = np.arange(np.ceil(start / step) * step, end + 1e-9, step)
        return {NODE: Frame(times, ("x",), np.ones((len(times), 1)))}

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        assert now is not None
        return await self.fetch(now - (points - 1) * step, now, step)


def config(tmp_path: Path, *extra: str) -> AnalyzerConfig:
    return load_analyzer_config(
        [
            "--target",
            "http://n:9478/metrics",
            "--state-dir",
            str(tmp_path / "s"),
            "--model-workers",
            "0",
            *extra,
        ],
        env={},
    )


def write_web_config(tmp_path: Path, extra: str = "") -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  ops: '{hashed}'\n{extra}")
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def started_app(aiohttp_client: Any, cfg: AnalyzerConfig, **kw: Any) -> tuple[Any, Any]:
    app = make_app(cfg, source=OneNode(), run_loop=False, **kw)  # type: ignore[arg-type]
    client = await aiohttp_client(app)
    an = app[ANALYZER]
    await an.score_pass(1_700_000_000.0)  # the node appears (cold start)
    return client, an


# --- basic auth and TLS -----------------------------------------------------------------------


async def test_web_config_protects_every_endpoint(aiohttp_client: Any, tmp_path: Path) -> None:
    web = write_web_config(tmp_path)
    client, an = await started_app(aiohttp_client, config(tmp_path, "--web-config", str(web)))
    for path in PATHS:
        r = await client.get(path)
        assert r.status == 401, path
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        assert (await client.get(path, headers=basic("ops", "wrong"))).status == 401, path
        assert (await client.get(path, headers=basic("ops", "s3cret"))).status == 200, path
    fits: list[str] = []
    an.request_fit = lambda instance, now=None: fits.append(instance) or True
    assert (await client.post("/api/refit")).status == 401
    assert fits == []
    r = await client.post("/api/refit", headers=basic("ops", "s3cret"))
    assert r.status == 202 and fits == [NODE]


async def test_without_web_config_everything_is_open(aiohttp_client: Any, tmp_path: Path) -> None:
    client, _ = await started_app(aiohttp_client, config(tmp_path))
    for path in PATHS:
        assert (await client.get(path)).status in (200, 503), path  # readyz: 503 is an answer


def openssl_cert(d: Path) -> tuple[Path, Path]:
    cert, key = d / "server.crt", d / "server.key"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=analyzer", "-addext",
             "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"openssl cannot make a test certificate: {e}")
    return cert, key


async def test_tls_and_basic_auth_on_a_real_socket(aiohttp_server: Any, tmp_path: Path) -> None:
    cert, key = openssl_cert(tmp_path)
    web_path = write_web_config(
        tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
    )
    web = load_web_config(web_path)
    assert web.ssl_context is not None
    cfg = config(tmp_path, "--web-config", str(web_path))
    app = make_app(cfg, source=OneNode(), run_loop=False, web_config=web)  # type: ignore[arg-type]
    server = await aiohttp_server(app, ssl=web.ssl_context)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{server.port}/healthz"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=client_ctx) as r:
            assert r.status == 401
        async with session.get(url, ssl=client_ctx, headers=basic("ops", "s3cret")) as r:
            assert r.status == 200 and (await r.json())["status"] in ("ok", "degraded")
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port gets nowhere
            async with session.get(url.replace("https", "http")) as r:
                await r.read()
                assert r.status != 200


# --- cross-origin state changes -------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ],
    ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()),
)
@pytest.mark.parametrize("auth", [False, True], ids=["no-auth", "basic-auth"])
async def test_cross_origin_post_is_refused_and_does_nothing(
    aiohttp_client: Any, tmp_path: Path, headers: dict[str, str], auth: bool
) -> None:
    extra = ("--web-config", str(write_web_config(tmp_path))) if auth else ()
    client, an = await started_app(aiohttp_client, config(tmp_path, *extra))
    fits: list[str] = []
    an.request_fit = lambda instance, now=None: fits.append(instance) or True
    creds = basic("ops", "s3cret") if auth else {}
    r = await client.post("/api/refit", headers={**headers, **creds}, data=b"instance=x")
    assert r.status == 403
    assert (await r.text()).startswith("cross-origin request refused")
    assert fits == []


async def test_same_origin_and_scripted_posts_are_accepted(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client, an = await started_app(aiohttp_client, config(tmp_path))
    fits: list[str] = []
    an.request_fit = lambda instance, now=None: fits.append(instance) or True
    own = str(client.make_url("/").origin())
    for headers in (
        {},  # curl -X POST, a script
        {"Origin": own},
        {"Sec-Fetch-Site": "same-origin", "Origin": own},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar, a bookmark
        {"Content-Type": "application/json"},
    ):
        r = await client.post("/api/refit", headers=headers)
        assert r.status == 202, headers
        assert (await r.json())["refitting"] == [NODE]
    assert fits == [NODE] * 5
    # another port or scheme of the same host is another origin
    other_port = own.rsplit(":", 1)[0] + ":1"
    assert (await client.post("/api/refit", headers={"Origin": other_port})).status == 403
    https = own.replace("http://", "https://")
    assert (await client.post("/api/refit", headers={"Origin": https})).status == 403
    # reads are not state changes: a cross-site GET is answered (and read only by CORS rules)
    r = await client.get("/api/nodes", headers={"Origin": "http://evil.example"})
    assert r.status == 200


def test_kubernetes_probes_use_liveness_and_readiness_paths(tmp_path: Path) -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    docs = yaml.safe_load_all((root / "deploy/kubernetes/analyzer-deployment.yaml").read_text())
    (dep,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    routes = {
        r.resource.canonical for r in make_app(config(tmp_path)).router.routes() if r.resource
    }
    assert {"/healthz", "/readyz"} <= routes
