"""Every bad configuration ends start-up with exit 2 and one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcwatch.cli import main


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


BINARY = b"\xff\xfe\x00\x81binary"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["agent", "--config", "{bin}"], "bin.yaml: not UTF-8 text"),
        (["agent", "--config", "{broken}"], "broken.yaml: not valid YAML"),
        (["agent", "--config", "{scalar}"], "scalar.yaml: top level must be a mapping"),
        (["agent", "--config", "{missing}"], "missing.yaml: cannot read"),
        (["agent", "--collector-timeout", "inf"], "flag --collector-timeout"),
        (["agent", "--config", "{inf}"], "key 'collector_timeout'"),
        (["agent", "--web-config", "{bin}"], "bin.yaml"),
        (["analyzer", "--config", "{bin}"], "bin.yaml: not UTF-8 text"),
        (["analyzer", "--target", "http://"], "key 'targets': bad target 'http://'"),
        (["analyzer", "--target", "ftp://x/metrics"], "key 'targets'"),
        (["analyzer", "--target", "http://[::1/metrics"], "key 'targets'"),
        (["analyzer", "--target", "h:1", "--state-dir", "{scalar}"], "key 'state_dir'"),
        (["analyzer", "--target", "h:1", "--queries-file", "{missing}"], "key 'queries_file'"),
        (["analyzer", "--target", "h:1", "--queries-file", "{scalar}"], "key 'queries_file'"),
        (["analyzer", "--target", "h:1", "--queries-file", "{bin}"], "key 'queries_file'"),
        (["analyzer", "--targets-file", "{bin}"], "key 'targets_file'"),
        (["analyzer", "--targets-file", "{scalar}", "--target", "ftp://x"], "key 'targets'"),
        (["analyzer", "--target", "h:1", "--model-train-window", "1h30"], "model-train-window"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    files = {
        "bin": write(tmp_path, "bin.yaml", BINARY),
        "broken": write(tmp_path, "broken.yaml", b"a: [\n  b: c\n"),
        "scalar": write(tmp_path, "scalar.yaml", b"5\n"),
        "inf": write(tmp_path, "inf.yaml", b"collector_timeout: .inf\n"),
        "missing": tmp_path / "missing.yaml",
    }
    argv = [a.format(**files) for a in argv]
    if argv[0] == "analyzer" and "--state-dir" not in argv:
        argv += ["--state-dir", str(tmp_path / "state")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert says in err
