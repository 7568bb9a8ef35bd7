"""The exporter-toolkit web config: TLS on real sockets, headers, basic auth, refused files."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from dcwatch import webauth
from dcwatch.agent.__main__ import main as agent_main
from dcwatch.settings import ConfigError
from dcwatch.webauth import basic_auth_middleware
from dcwatch.webconfig import WebConfig, load_web_config

# --- certificates, made with the openssl CLI (the venv has no `cryptography`) --------------


def openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"openssl cannot make test certificates: {e}")


def self_signed(d: Path, name: str, san: str | None = None) -> tuple[Path, Path]:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "1", "-subj", f"/CN={name}", *extra, "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def signed_by(d: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    cert, key, csr = d / f"{name}.crt", d / f"{name}.key", d / f"{name}.csr"
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "1", "-out", str(cert),
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Certs:
    dir: Path
    server: tuple[Path, Path]
    ca: tuple[Path, Path]
    other_ca: tuple[Path, Path]
    client_self_signed: tuple[Path, Path]
    client_of_ca: tuple[Path, Path]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca = self_signed(d, "ca")
    return Certs(
        d,
        self_signed(d, "server", "IP:127.0.0.1"),
        ca,
        self_signed(d, "other-ca"),
        self_signed(d, "client-self"),
        signed_by(d, "client-of-ca", ca),
    )


def tls_file(certs: Certs, extra: str = "", http: str = "") -> Path:
    p = certs.dir / "web.yml"
    p.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certs.server[0].name}\n"
        f"  key_file: {certs.server[1].name}\n"
        + "".join(f"  {line}\n" for line in extra.splitlines())
        + http
    )
    return p


# --- a server on a real socket, answering with what TLS negotiated ---------------------------


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def tls_info(request: web.Request) -> web.Response:
    obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    assert isinstance(obj, ssl.SSLObject)
    cipher = obj.cipher()
    return web.json_response(
        {
            "version": obj.version(),
            "cipher": cipher[0] if cipher else None,
            "client_cert": obj.getpeercert(binary_form=True) is not None,
        }
    )


async def start(wc: WebConfig, open_paths: tuple[str, ...] = ()) -> tuple[web.AppRunner, int]:
    app = web.Application(middlewares=wc.middlewares(open_paths))
    app.router.add_get("/", tls_info)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=wc.ssl_context).start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Path], Any]]:
    runners: list[web.AppRunner] = []

    async def run(path: Path) -> int:
        runner, port = await start(load_web_config(path))
        runners.append(runner)
        return port

    yield run
    for r in runners:
        await r.cleanup()


def client_ctx(certs: Certs, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.server[0]))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


async def fetch(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"https://127.0.0.1:{port}/", ssl=ctx) as r,
    ):
        assert r.status == 200
        info: dict[str, Any] = await r.json()
        return info


# --- client certificates -----------------------------------------------------------------


async def test_require_any_client_cert_accepts_a_self_signed_one(certs: Certs, serve) -> None:
    port = await serve(tls_file(certs, "client_auth_type: RequireAnyClientCert"))
    info = await fetch(port, client_ctx(certs, certs.client_self_signed))
    assert info["client_cert"] is True
    with pytest.raises(aiohttp.ClientError):  # but one there must be
        await fetch(port, client_ctx(certs))


async def test_request_client_cert_takes_any_or_none(certs: Certs, serve) -> None:
    port = await serve(tls_file(certs, "client_auth_type: RequestClientCert"))
    assert (await fetch(port, client_ctx(certs)))["client_cert"] is False
    assert (await fetch(port, client_ctx(certs, certs.client_self_signed)))["client_cert"] is True


async def test_require_and_verify_checks_against_the_configured_ca(certs: Certs, serve) -> None:
    auth = "client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: "
    port = await serve(tls_file(certs, auth + certs.ca[0].name))
    assert (await fetch(port, client_ctx(certs, certs.client_of_ca)))["client_cert"] is True
    for refused in (certs.client_self_signed, None):
        with pytest.raises(aiohttp.ClientError):
            await fetch(port, client_ctx(certs, refused))
    # The same client certificate against another CA is refused.
    port = await serve(tls_file(certs, auth + certs.other_ca[0].name))
    with pytest.raises(aiohttp.ClientError):
        await fetch(port, client_ctx(certs, certs.client_of_ca))


async def test_verify_client_cert_if_given(certs: Certs, serve) -> None:
    auth = f"client_auth_type: VerifyClientCertIfGiven\nclient_ca_file: {certs.ca[0].name}"
    port = await serve(tls_file(certs, auth))
    assert (await fetch(port, client_ctx(certs)))["client_cert"] is False
    assert (await fetch(port, client_ctx(certs, certs.client_of_ca)))["client_cert"] is True
    with pytest.raises(aiohttp.ClientError):
        await fetch(port, client_ctx(certs, certs.client_self_signed))


# --- versions, cipher suites, curves ------------------------------------------------------


async def test_min_version_tls13_refuses_a_tls12_only_client(certs: Certs, serve) -> None:
    port = await serve(tls_file(certs, "min_version: TLS13"))
    assert (await fetch(port, client_ctx(certs)))["version"] == "TLSv1.3"
    old = client_ctx(certs)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(aiohttp.ClientError):
        await fetch(port, old)


async def test_max_version_and_cipher_suites(certs: Certs, serve) -> None:
    cfg = "max_version: TLS12\ncipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]"
    port = await serve(tls_file(certs, cfg))
    info = await fetch(port, client_ctx(certs))
    assert info == {
        "version": "TLSv1.2",
        "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "client_cert": False,
    }
    other = client_ctx(certs)
    other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # a suite the server does not allow
    with pytest.raises(aiohttp.ClientError):
        await fetch(port, other)


@pytest.mark.parametrize("curves", ["[CurveP384, CurveP521]", "[CurveP384]"])
async def test_curve_preferences_limit_the_key_exchange(certs: Certs, serve, curves: str) -> None:
    port = await serve(tls_file(certs, f"curve_preferences: {curves}"))
    for client_curve, ok in (("secp384r1", True), ("prime256v1", False)):
        ctx = client_ctx(certs)
        ctx.set_ecdh_curve(client_curve)  # OpenSSL 3: the client offers this group only
        if ok:
            await fetch(port, ctx)
        else:
            with pytest.raises(aiohttp.ClientError):
                await fetch(port, ctx)


# --- headers ------------------------------------------------------------------------------

HEADERS = (
    "http_server_config:\n  http2: false\n  headers:\n"
    "    Strict-Transport-Security: max-age=31536000\n"
    "    x-frame-options: DENY\n"
    "    X-Content-Type-Options: nosniff\n"
)


async def test_configured_headers_on_every_response(aiohttp_client, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  prom: {hashed}\n{HEADERS}")
    wc = load_web_config(p)
    assert wc.headers["X-Frame-Options"] == "DENY"
    app = web.Application(middlewares=wc.middlewares())
    app.router.add_get("/", ok)
    client = await aiohttp_client(app)
    for headers, status in (({}, 401), (basic("prom", "pw"), 200)):
        r = await client.get("/", headers=headers)
        assert r.status == status
        assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await client.get("/nowhere", headers=basic("prom", "pw"))
    assert r.status == 404 and r.headers["X-Frame-Options"] == "DENY"


# --- files refused at load ----------------------------------------------------------------

HASH = "$2b$04$" + "a" * 53
TLS = "tls_server_config:\n  cert_file: c\n  key_file: k\n"
T = "tls_server_config."
HTTP = "http_server_config:\n"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("basic_auth_users: 5\n", "basic_auth_users"),
        ("basic_auth_users:\n  bob: $2y$10$abc\n", "basic_auth_users.bob"),
        (f"basic_auth_users:\n  bob: '{HASH[:4]}03{HASH[6:]}'\n", "basic_auth_users.bob"),
        ("basic_auth_users:\n  bob: 12345\n", "basic_auth_users.bob"),
        ("tls_server_config:\n  cert_file: [a]\n  key_file: k\n", T + "cert_file"),
        ("tls_server_config: [a]\n", "tls_server_config"),
        ("tls_server_config:\n  key_file: k.pem\n", T + "cert_file"),
        (TLS + "  cert_fil: x\n", T + "cert_fil"),
        (TLS + "  min_version: TLS99\n", T + "min_version"),
        (TLS + "  min_version: TLS13\n  max_version: TLS12\n", T + "max_version"),
        (TLS + "  cipher_suites: [RC4]\n", T + "cipher_suites"),
        (TLS + "  cipher_suites: TLS_AES_128_GCM_SHA256\n", T + "cipher_suites"),
        (TLS + "  curve_preferences: [P256]\n", T + "curve_preferences"),
        (TLS + "  prefer_server_cipher_suites: 'yes'\n", T + "prefer_server_cipher_suites"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", T + "client_ca_file"),
        (TLS + "  client_ca_file: ca\n", T + "client_ca_file"),
        (TLS + "  client_allowed_sans: [a]\n", T + "client_allowed_sans"),
        (HTTP + "  headers:\n    Server: dcwatch\n", "http_server_config.headers.Server"),
        (
            HTTP + "  headers:\n    X-Frame-Options: allow\n",
            "http_server_config.headers.X-Frame-Options",
        ),
        (HTTP + "  http2: maybe\n", "http_server_config.http2"),
        (HTTP + "  compress: true\n", "http_server_config.compress"),
        ("basic_auth: {}\n", "basic_auth"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "web.yml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_web_config(f)
    msg = str(e.value)
    assert f"key {key!r}" in msg and str(f) in msg and "\n" not in msg


@pytest.mark.parametrize(
    "content", [b"basic_auth_users:\n  \xff\xfe\x00: x\n", b"\x00\x01\x02", b"a: [b\n  c: {"]
)
def test_binary_or_broken_file_is_a_one_line_config_error(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "web.yml"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_web_config(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("missing", ["cert_file", "key_file"])
def test_missing_cert_or_key_names_key_and_path(certs: Certs, missing: str) -> None:
    p = certs.dir / "missing.yml"
    files = {
        "cert_file": certs.server[0].name,
        "key_file": certs.server[1].name,
        missing: "gone.pem",
    }
    p.write_text("tls_server_config:\n" + "".join(f"  {k}: {v}\n" for k, v in files.items()))
    with pytest.raises(ConfigError) as e:
        load_web_config(p)
    msg = str(e.value)
    assert f"tls_server_config.{missing}" in msg and str(certs.dir / "gone.pem") in msg


def test_key_of_another_certificate_is_named(certs: Certs) -> None:
    p = certs.dir / "mismatch.yml"
    p.write_text(f"tls_server_config:\n  cert_file: {certs.server[0].name}\n  key_file: ca.key\n")
    with pytest.raises(ConfigError, match=r"tls_server_config\.key_file"):
        load_web_config(p)


def test_agent_exits_2_on_a_bad_web_config(tmp_path: Path, capsys) -> None:
    f = tmp_path / "web.yml"
    f.write_text("basic_auth_users:\n  bob: $2y$10$abc\n")
    assert agent_main(["--web-config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "basic_auth_users.bob" in err and str(f) in err and "$2y$10$abc" not in err


def test_accepted_hash_prefixes_and_a_full_file(certs: Certs) -> None:
    h = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    users = {"a": "$2a$" + h[4:], "b": h, "c": "$2y$" + h[4:], "1234": h}
    p = certs.dir / "full.yml"
    p.write_text(
        "basic_auth_users:\n"
        + "".join(f"  {u}: '{v}'\n" for u, v in users.items())
        + "tls_server_config:\n"
        f"  cert_file: {certs.server[0].name}\n  key_file: {certs.server[1].name}\n"
        "  client_auth_type: RequireClientCert\n"
        "  min_version: TLS10\n  max_version: TLS13\n  prefer_server_cipher_suites: false\n"
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n"
        + HEADERS
    )
    wc = load_web_config(p)
    assert wc.basic_auth_users == users
    assert wc.ssl_context is not None
    assert not wc.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert wc.ssl_context.verify_mode == ssl.CERT_REQUIRED  # RequireClientCert: old name
    assert h not in repr(wc)


# --- basic auth ---------------------------------------------------------------------------


def basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def auth_app(users: dict[str, str], **kw: Any) -> web.Application:
    app = web.Application(middlewares=[basic_auth_middleware(users, frozenset({"/open"}), **kw)])
    app.router.add_get("/", ok)
    app.router.add_get("/open", ok)
    return app


@pytest.fixture
def count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hashes bcrypt was asked to check, in order."""
    seen: list[str] = []
    real = webauth._checkpw

    def counting(password: bytes, hashed: str) -> bool:
        seen.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(webauth, "_checkpw", counting)
    return seen


async def test_verified_credentials_are_cached_in_a_bounded_cache(
    aiohttp_client, count_checks: list[str]
) -> None:
    h = {u: bcrypt.hashpw(u.encode() + b"-pw", bcrypt.gensalt(4)).decode() for u in ("a", "b")}
    client = await aiohttp_client(auth_app(h, cache_size=1))
    assert (await client.get("/", headers=basic("a", "a-pw"))).status == 200
    assert (await client.get("/", headers=basic("a", "a-pw"))).status == 200
    assert count_checks == [h["a"]]  # the second one came from the cache
    assert (await client.get("/", headers=basic("a", "a-pwX"))).status == 401
    assert (await client.get("/", headers=basic("b", "b-pw"))).status == 200  # pushes "a" out
    assert (await client.get("/", headers=basic("a", "a-pw"))).status == 200
    assert count_checks == [h["a"], h["a"], h["b"], h["a"]]


async def test_unknown_user_pays_a_check_of_the_configured_cost(
    aiohttp_client, count_checks: list[str]
) -> None:
    users = {"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(6)).decode()}
    client = await aiohttp_client(auth_app(users))
    assert (await client.get("/", headers=basic("nobody", "pw"))).status == 401
    assert len(count_checks) == 1 and count_checks[0].startswith("$2b$06$")
    assert count_checks[0] != users["prom"]


async def test_unknown_user_takes_as_long_as_a_wrong_password(aiohttp_client) -> None:
    users = {"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(8)).decode()}
    client = await aiohttp_client(auth_app(users))

    async def median(user: str) -> float:
        times = []
        for i in range(7):
            t = time.perf_counter()
            assert (await client.get("/", headers=basic(user, f"wrong{i}"))).status == 401
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    known, unknown = await median("prom"), await median("nobody")
    assert 0.5 < unknown / known < 2, (known, unknown)


async def test_saturated_checks_answer_429_and_the_loop_stays_free(
    aiohttp_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, running = threading.Event(), threading.Semaphore(0)

    def stuck(password: bytes, hashed: str) -> bool:
        running.release()
        release.wait(10)
        return False

    monkeypatch.setattr(webauth, "_checkpw", stuck)
    client = await aiohttp_client(auth_app({"prom": HASH}, workers=2, queue=0))
    first = [asyncio.create_task(client.get("/", headers=basic("prom", f"x{i}"))) for i in range(2)]
    for _ in range(2):  # both checks running: every slot taken
        assert await asyncio.to_thread(running.acquire, True, 10)
    t = time.perf_counter()
    assert (await client.get("/", headers=basic("prom", "y"))).status == 429
    assert (await client.get("/open")).status == 200  # the event loop is not blocked
    assert time.perf_counter() - t < 1
    release.set()
    assert [r.status for r in await asyncio.gather(*first)] == [401, 401]
    # Slots are free again once the checks are done.
    assert (await client.get("/", headers=basic("prom", "z"))).status == 401


async def test_odd_credentials_are_refused_not_errors(aiohttp_client) -> None:
    users = {"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}
    client = await aiohttp_client(auth_app(users))
    for headers in (
        basic("prom", "p" * 100),  # over bcrypt's 72 bytes
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer x"},
    ):
        assert (await client.get("/", headers=headers)).status == 401


async def test_passwords_and_hashes_never_logged(aiohttp_client, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(4)).decode()
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n{HEADERS}")
    wc = load_web_config(p)
    client = await aiohttp_client(auth_app(wc.basic_auth_users))
    for user, pw in (("prom", "wr0ng-pw"), ("nobody", "s3cret-pw"), ("prom", "s3cret-pw")):
        await client.get("/", headers=basic(user, pw))
    logging.getLogger("test").info("config %r", wc)
    # A password pasted where the hash belongs is not echoed either.
    p.write_text("basic_auth_users:\n  prom: pl41ntext-pw\n")
    with pytest.raises(ConfigError) as e:
        load_web_config(p)
    assert "pl41ntext-pw" not in str(e.value)
    for secret in ("s3cret-pw", "wr0ng-pw", hashed, hashed[7:29]):
        assert secret not in caplog.text
    assert "unauthorised" in caplog.text  # the failures themselves are logged
