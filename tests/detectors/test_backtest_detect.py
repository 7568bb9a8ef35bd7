"""``dcwatch backtest detect`` on small synthetic CSVs and one real entity of the datasets."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcwatch.cli import main as dcwatch
from dcwatch.detectors.backtest import evaluation as ev
from dcwatch.detectors.backtest.detect import EntityResult, dataset_entities, event_rows
from tests.conftest import SHARED_DATASETS

STEP = 60


def write_pair(directory: Path, name: str, seed: int, fault: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    n_train, n_test = 2 * 1440, 1440
    ts = 1_704_067_200 + STEP * np.arange(n_train + n_test)
    phase = 2 * np.pi * (ts % 86400) / 86400
    df = pd.DataFrame(
        {
            "timestamp": ts,
            "cpu": 0.4 + 0.2 * np.sin(phase) + rng.normal(0, 0.01, len(ts)),
            "mem": 0.6 + rng.normal(0, 0.005, len(ts)),
            "const": 1.0,
        }
    )
    label = np.zeros(len(ts), dtype=int)
    if fault:
        a = n_train + 700
        df.loc[a : a + 29, "cpu"] += 0.5
        df.loc[a : a + 29, "mem"] += 0.1
        label[a : a + 30] = 1
    df.loc[n_train + 100, "mem"] = np.nan  # a gap
    df["label"] = label
    train = directory / f"{name}.train.csv.gz"
    test = directory / f"{name}.test.csv.gz"
    df.iloc[:n_train].drop(columns="label").to_csv(train, index=False)
    df.iloc[n_train:].to_csv(test, index=False)
    return train, test


def test_single_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, test = write_pair(tmp_path, "node1", 0)
    out = tmp_path / "out.csv"
    assert (
        dcwatch(
            ["backtest", "detect", "--train", str(train), "--test", str(test), "--output", str(out)]
        )
        == 0
    )
    res = pd.read_csv(out)
    assert list(res.columns) == ["timestamp", "score", "is_anomaly"]
    src = pd.read_csv(test)
    assert len(res) == len(src)
    np.testing.assert_array_equal(res["timestamp"], src["timestamp"])
    assert set(res["is_anomaly"].unique()) <= {0, 1}
    assert res["score"].notna().all()
    fault = src["label"].to_numpy() == 1
    assert res.loc[fault, "is_anomaly"].any()
    assert res.loc[fault, "score"].max() > res.loc[~fault, "score"].quantile(0.99)
    text = capsys.readouterr().out
    assert "composite F1" in text and "false alerts/entity-day" in text
    # The detection delay printed is the one of the written alerts, in steps and seconds.
    delays = ev.event_delays(src["label"].to_numpy(), res["is_anomaly"].to_numpy())
    caught = delays[delays >= 0]
    step = float(np.median(np.diff(src["timestamp"])))
    shown = re.search(r"delay ([\d.]+) steps \((\d+) s\), (\d+) events missed", text)
    assert shown is not None and caught.size
    assert float(shown[1]) == pytest.approx(caught.mean(), abs=0.05)
    assert int(shown[2]) == pytest.approx(caught.mean() * step, abs=1)
    assert int(shown[3]) == (delays < 0).sum()
    early = re.search(rf"(\d+)% of events caught within {ev.EARLY_STEPS} steps", text)
    assert early is not None
    on_time = ((delays >= 0) & (delays <= ev.EARLY_STEPS)).sum()
    assert int(early[1]) == round(100 * on_time / len(delays))
    # Every event with its own delay, beside the output.
    events = pd.read_csv(tmp_path / "out.events.csv")
    ts = src["timestamp"].to_numpy()
    first = int(np.flatnonzero(fault)[0])
    assert events.to_dict("records") == [
        {
            "entity": "node1",
            "start": ts[first],
            "end": ts[first + 29],
            "points": 30,
            "first_alert": ts[first + delays[0]],
            "delay_steps": delays[0],
            "delay_seconds": delays[0] * STEP,
        }
    ]


def test_event_rows_leave_a_missed_event_empty() -> None:
    ts = 1_704_067_200 + STEP * np.arange(10)
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], dtype=bool)
    flags = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0], dtype=np.int8)
    out = pd.DataFrame({"timestamp": ts, "score": flags * 2.0, "is_anomaly": flags})
    res = EntityResult(name="n", output=out, labels=labels, days=1.0, counts=None)
    rows = event_rows(res)
    assert rows["points"].tolist() == [2, 3]
    assert rows["start"].tolist() == [ts[1], ts[5]] and rows["end"].tolist() == [ts[2], ts[7]]
    missed, caught = rows.iloc[0], rows.iloc[1]
    assert pd.isna(missed["first_alert"]) and pd.isna(missed["delay_steps"])
    assert pd.isna(missed["delay_seconds"])
    assert (caught["first_alert"], caught["delay_steps"], caught["delay_seconds"]) == (
        ts[6],
        1,
        STEP,
    )


def test_labels_are_never_used(tmp_path: Path) -> None:
    train, test = write_pair(tmp_path, "node1", 1)
    flipped = tmp_path / "flipped.test.csv.gz"
    df = pd.read_csv(test)
    df["label"] = 1 - df["label"]
    df.to_csv(flipped, index=False)
    nolabel = tmp_path / "nolabel.test.csv.gz"
    df.drop(columns="label").to_csv(nolabel, index=False)
    outs = []
    for t in (test, flipped, nolabel):
        out = tmp_path / f"{t.name}.out.csv"
        assert (
            dcwatch(
                [
                    "backtest",
                    "detect",
                    "--train",
                    str(train),
                    "--test",
                    str(t),
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        outs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    pd.testing.assert_frame_equal(outs[0], outs[2])


def test_dataset_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_pair(data, "a", 2)
    write_pair(data, "b", 3, fault=False)
    (data / "orphan.train.csv.gz").write_bytes((data / "a.train.csv.gz").read_bytes())
    assert [e[0] for e in dataset_entities(data)] == ["a", "b"]
    out = tmp_path / "out"
    assert dcwatch(["backtest", "detect", "--dataset", str(data), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv", "events.csv"]
    assert "pooled over 2 entities" in capsys.readouterr().out
    events = pd.read_csv(out / "events.csv")
    assert events["entity"].tolist() == ["a"]  # b has no labelled event
    assert events["points"].tolist() == [30] and events["delay_steps"].notna().all()


def test_usage_errors(tmp_path: Path) -> None:
    train, _ = write_pair(tmp_path, "x", 4)
    assert dcwatch(["backtest", "detect", "--train", str(train), "--output", "o.csv"]) == 2
    assert (
        dcwatch(
            [
                "backtest",
                "detect",
                "--dataset",
                str(tmp_path / "none"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit):
        dcwatch(["backtest", "detect", "--output", "o.csv"])


REAL = SHARED_DATASETS / "detect" / "cmd-dev"
REAL_ENTITY = "data-ingress-rate__ingress-01"


@pytest.mark.skipif(
    not (REAL / f"{REAL_ENTITY}.train.csv.gz").exists(), reason="shared datasets not present"
)
def test_real_entity(tmp_path: Path) -> None:
    data = tmp_path / "real"
    data.mkdir()
    for part in ("train", "test"):
        shutil.copy(REAL / f"{REAL_ENTITY}.{part}.csv.gz", data)
    out = tmp_path / "out"
    assert (
        dcwatch(["backtest", "detect", "--dataset", str(data), "--output", str(out), "--quiet"])
        == 0
    )
    res = pd.read_csv(out / f"{REAL_ENTITY}.csv")
    src = pd.read_csv(data / f"{REAL_ENTITY}.test.csv.gz")
    assert len(res) == len(src)
    assert res["is_anomaly"].isin([0, 1]).all()
    # The labelled event is caught and false alerts stay rare (at most one a day).
    assert res.loc[src["label"] == 1, "is_anomaly"].any()
    flagged = res["is_anomaly"].to_numpy().astype(bool)
    edges = np.diff(np.concatenate([[0], flagged.astype(int), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    false = sum(not src["label"].iloc[a:b].any() for a, b in zip(starts, stops, strict=True))
    assert false <= len(src) / 1440


def test_refit_schedule(tmp_path: Path) -> None:
    train, test = write_pair(tmp_path, "node1", 5)
    outs = {}
    for every in ("0", "0.25", "5"):
        out = tmp_path / f"refit{every}.csv"
        args = ["--train", str(train), "--test", str(test), "--output", str(out)]
        assert dcwatch(["backtest", "detect", *args, "--refit-every", every]) == 0
        outs[every] = pd.read_csv(out)
    # A schedule longer than the test data never refits: same output as fitting once.
    pd.testing.assert_frame_equal(outs["0"], outs["5"])
    refitted = outs["0.25"]
    assert len(refitted) == len(outs["0"])
    src = pd.read_csv(test)
    assert refitted.loc[src["label"] == 1, "is_anomaly"].any()
