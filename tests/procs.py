"""Real binaries for end-to-end tests: started on free 127.0.0.1 ports in a temp dir, waited for,
stopped by their own pid; their output goes to a log file quoted when anything fails.

    am = start_alertmanager(tmp_path)          # Proc: am.url, am.stop(), am.kill(), am.restart()
    prom = start_prometheus(tmp_path, ["127.0.0.1:9478"], alertmanagers=[am.url])
    request.addfinalizer(am.stop)              # or: with start_alertmanager(tmp_path) as am:
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import find_binary, free_port

ALERTMANAGER_NAMES = ("prometheus-alertmanager", "alertmanager")
PROMETHEUS_NAMES = ("prometheus",)


def alertmanager_binary() -> str | None:
    return find_binary(*ALERTMANAGER_NAMES)


def prometheus_binary() -> str | None:
    return find_binary(*PROMETHEUS_NAMES)


class Proc:
    """One process of a real binary listening on ``127.0.0.1:port``.

    ``argv`` is a function of the port so that :meth:`restart` comes back on the same port and a
    first start that loses a race for its port can try another.
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[int], list[str]],
        workdir: Path,
        *,
        port: int | None = None,
        ready_path: str = "/-/ready",
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._argv = argv
        self.workdir = workdir
        self.port = port or free_port()
        self.ready_path = ready_path
        self.start_timeout = start_timeout
        self.log_path = workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, *, other_port_on_clash: bool = True) -> Proc:
        """Start and wait until ``ready_path`` answers 200 (another port if this one is taken)."""
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready()
                return self
            except _PortTaken:
                if attempt == 2 or not other_port_on_clash:
                    raise AssertionError(self._failure("could not bind its port")) from None
                self.port = free_port()
        return self

    def _spawn(self) -> None:
        argv = self._argv(self.port)
        with self.log_path.open("ab") as logf:
            logf.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            logf.flush()
            self.popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it; we stop it
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken
                raise AssertionError(self._failure(f"exited with {self.popen.returncode}"))
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(self._failure(f"not ready within {self.start_timeout}s"))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; a no-op when not running."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown) and reap."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def restart(self) -> Proc:
        """Stop if running, then start again on the same port with the same data directory."""
        self.stop()
        return self.start(other_port_on_clash=False)

    def reload(self) -> None:
        """Ask it to re-read its config file (``POST /-/reload``)."""
        req = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _failure(self, what: str) -> str:
        return (
            f"{self.name} on port {self.port} {what}; its log ({self.log_path}):\n{self.log_tail()}"
        )

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _workdir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``... when a test runs more than one."""
    d, n = base / name, 1
    while d.exists():
        n += 1
        d = base / f"{name}-{n}"
    d.mkdir(parents=True)
    return d


def _write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


MINIMAL_ALERTMANAGER_CONFIG: dict[str, Any] = {
    "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
    "receivers": [{"name": "null"}],
}


def start_alertmanager(
    tmp_path: Path,
    *,
    config: dict[str, Any] | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    binary: str | None = None,
) -> Proc:
    """A real Alertmanager on 127.0.0.1, clustering off, data and config under ``tmp_path``."""
    exe = binary or alertmanager_binary()
    if exe is None:
        raise FileNotFoundError(f"none of {ALERTMANAGER_NAMES} is installed")
    d = _workdir(tmp_path, "alertmanager")
    cfg = _write_yaml(d / "alertmanager.yml", config or MINIMAL_ALERTMANAGER_CONFIG)

    def argv(p: int) -> list[str]:
        return [
            exe,
            f"--config.file={cfg}",
            f"--storage.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{p}",
            "--cluster.listen-address=",  # no gossip: nothing else on the machine is reached
            *extra_args,
        ]

    return Proc("alertmanager", argv, d, port=port).start()


def start_prometheus(
    tmp_path: Path,
    scrape_targets: Sequence[str] = (),
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
    extra_config: dict[str, Any] | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    binary: str | None = None,
) -> Proc:
    """A real Prometheus on 127.0.0.1 scraping ``scrape_targets`` (``host:port`` or URLs).

    ``alertmanagers`` are URLs (``am.url``); ``extra_config`` is merged into the top level of the
    config. Lifecycle API on: rewrite ``proc.workdir / 'prometheus.yml'`` and ``proc.reload()``.
    """
    exe = binary or prometheus_binary()
    if exe is None:
        raise FileNotFoundError(f"none of {PROMETHEUS_NAMES} is installed")
    d = _workdir(tmp_path, "prometheus")
    scrape_configs = []
    for i, target in enumerate(scrape_targets):
        u = urllib.parse.urlsplit(target if "://" in target else f"http://{target}")
        job: dict[str, Any] = {
            "job_name": f"target{i}",
            "scheme": u.scheme,
            "static_configs": [{"targets": [u.netloc]}],
        }
        if u.path not in ("", "/", "/metrics"):
            job["metrics_path"] = u.path
        scrape_configs.append(job)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "scrape_configs": scrape_configs,
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanagers:
        targets = [urllib.parse.urlsplit(a).netloc for a in alertmanagers]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
    config |= extra_config or {}
    cfg = _write_yaml(d / "prometheus.yml", config)

    def argv(p: int) -> list[str]:
        return [
            exe,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{p}",
            "--web.enable-lifecycle",
            *extra_args,
        ]

    return Proc("prometheus", argv, d, port=port).start()
