"""``dcwatch backtest detect``: fit on recorded training metrics, score the test part, write
``timestamp,score,is_anomaly``.

    dcwatch backtest detect --train TRAIN.csv --test TEST.csv --output OUT.csv
    dcwatch backtest detect --dataset DIR --output OUTDIR

The model is the live service's ``NodeModel`` (features -> ensemble -> decisions) with its
defaults: fitted on the training file, then fed the whole test file as the next rows. A ``label``
column in the test file is only read after scoring, to print precision/recall/F1 (point-wise,
point-adjusted, event-wise), composite F1, false alerts per entity-day and the detection delay
(mean over the events caught, steps and seconds, and the events missed), and to write every
labelled event with its own delay next to the output (``event_rows``): ``OUT.events.csv``, or
``OUTDIR/events.csv`` with ``--dataset``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dcwatch.detectors.backtest import evaluation as ev
from dcwatch.detectors.decisions import SECONDS_PER_DAY
from dcwatch.detectors.models.node import ModelConfig, NodeModel

LABEL = "label"
TIMESTAMP = "timestamp"
TRAIN_SUFFIX = ".train.csv.gz"
TEST_SUFFIX = ".test.csv.gz"


@dataclass
class EntityResult:
    name: str
    output: pd.DataFrame  # timestamp, score, is_anomaly
    labels: np.ndarray | None
    days: float
    counts: ev.Counts | None


def read_frame(path: Path) -> tuple[pd.DataFrame, np.ndarray | None]:
    """A recorded CSV as a frame indexed by timestamp, and its labels if it has them."""
    df = pd.read_csv(path)
    if TIMESTAMP not in df.columns:
        raise ValueError(f"{path}: no {TIMESTAMP!r} column")
    labels = None
    if LABEL in df.columns:
        labels = df.pop(LABEL).fillna(0).to_numpy().astype(bool)
    df = df.set_index(TIMESTAMP)
    return df, labels


def test_days(ts: np.ndarray) -> float:
    """Days of data covered by the rows (rows x median step)."""
    if len(ts) < 2:
        return len(ts) / 1440.0
    return len(ts) * float(np.median(np.diff(ts))) / SECONDS_PER_DAY


def run_entity(
    name: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    labels: np.ndarray | None,
    config: ModelConfig | None = None,
    refit_every_days: float = 0.0,
) -> EntityResult:
    """Fit on ``train``, score ``test`` as the following rows; counts when labels are given.

    With ``refit_every_days`` > 0 the model is refitted on that schedule as the service would do:
    on a window as long as ``train`` ending at the last scored row, leaving out the rows that
    alerted, with the alert state carried over.
    """
    score, flags = score_with_refits(train, test, config, refit_every_days)
    ts = np.asarray(test.index, dtype=np.int64)
    out = pd.DataFrame({TIMESTAMP: ts, "score": score, "is_anomaly": flags.astype(np.int8)})
    days = test_days(ts.astype(float))
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else None
    counts = ev.counts(labels, flags, days, step) if labels is not None else None
    return EntityResult(name=name, output=out, labels=labels, days=days, counts=counts)


def score_with_refits(
    train: pd.DataFrame, test: pd.DataFrame, config: ModelConfig | None, every_days: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and alert flags of ``test`` after fitting on ``train`` (refitting if asked)."""
    if len(train) and len(test) and float(test.index[0]) <= float(train.index[-1]):
        raise ValueError(
            f"test rows must follow the training rows: test starts at {test.index[0]}, "
            f"training ends at {train.index[-1]}"
        )
    model = NodeModel(config).fit(train)
    if every_days <= 0 or len(test) == 0:
        res = model.score(test, explain=False)
        return res.score, res.is_anomaly
    step = model.features_.step_
    chunk = max(1, round(every_days * SECONDS_PER_DAY / step))
    window = len(train)
    history = pd.concat([train, test])
    alerted = np.zeros(len(history), dtype=bool)
    n = len(train)
    scores, flags = [], []
    for lo in range(0, len(test), chunk):
        if lo:
            start = max(0, n + lo - window)
            model = model.refit(history.iloc[start : n + lo], alerted[start : n + lo])
        res = model.score(test.iloc[lo : lo + chunk], explain=False)
        alerted[n + lo : n + lo + len(res.is_anomaly)] = res.is_anomaly
        scores.append(res.score)
        flags.append(res.is_anomaly)
    return np.concatenate(scores), np.concatenate(flags)


EVENT_COLUMNS = (
    "entity",
    "start",
    "end",
    "points",
    "first_alert",
    "delay_steps",
    "delay_seconds",
)


def event_rows(res: EntityResult) -> pd.DataFrame:
    """One row per labelled event of ``res``: its start and last point (unix seconds), length,
    the first alerted point inside it and the delay in steps and seconds (empty when missed)."""
    if res.labels is None:
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    ts = res.output[TIMESTAMP].to_numpy()
    rows = []
    for e in ev.events(res.labels, res.output["is_anomaly"].to_numpy()):
        first = e.first_flag
        rows.append(
            (
                res.name,
                int(ts[e.start]),
                int(ts[e.stop - 1]),
                e.stop - e.start,
                None if first is None else int(ts[first]),
                e.delay_steps,
                None if first is None else int(ts[first] - ts[e.start]),
            )
        )
    out = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    for c in ("first_alert", "delay_steps", "delay_seconds"):
        out[c] = out[c].astype("Int64")  # empty (not NaN or 0) for a missed event
    return out


def write_output(out: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    out.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)


def dataset_entities(directory: Path) -> list[tuple[str, Path, Path]]:
    """(entity, train, test) for every complete pair in ``directory``, sorted by name."""
    found = []
    for train in sorted(directory.glob(f"*{TRAIN_SUFFIX}")):
        name = train.name[: -len(TRAIN_SUFFIX)]
        test = directory / f"{name}{TEST_SUFFIX}"
        if test.exists():
            found.append((name, train, test))
    return found


def format_metrics(m: ev.Metrics, best: float | None = None) -> str:
    line = (
        f"point P/R/F1 {m.point_precision:.3f}/{m.point_recall:.3f}/{m.point_f1:.3f}  "
        f"point-adjusted {m.pa_precision:.3f}/{m.pa_recall:.3f}/{m.pa_f1:.3f}  "
        f"event {m.event_precision:.3f}/{m.event_recall:.3f}/{m.event_f1:.3f}  "
        f"composite F1 {m.composite_f1:.3f}  false alerts/entity-day {m.false_alerts_per_day:.2f}  "
        f"delay {m.mean_delay_steps:.1f} steps ({m.mean_delay_seconds:.0f} s), "
        f"{m.events_missed} events missed, "
        f"{m.early_event_recall:.0%} of events caught within {ev.EARLY_STEPS} steps"
    )
    if best is not None:
        line += f"  best-threshold point F1 {best:.3f}"
    return line


def summarise(results: Sequence[EntityResult]) -> tuple[ev.Metrics, float] | None:
    """Pooled metrics over labelled entities and the best single-threshold point F1."""
    labelled = [r for r in results if r.counts is not None and r.labels is not None]
    if not labelled:
        return None
    total = ev.Counts()
    for r in labelled:
        assert r.counts is not None
        total = total + r.counts
    y = np.concatenate([r.labels for r in labelled if r.labels is not None])
    s = np.concatenate([r.output["score"].to_numpy() for r in labelled])
    return ev.metrics_from_counts(total), ev.best_point_f1(y, s)[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcwatch backtest detect",
        description="Fit the anomaly detector on training metrics and score test metrics.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train", type=Path, help="training CSV (timestamp + one column per series)")
    src.add_argument("--dataset", type=Path, help="directory of <entity>.{train,test}.csv.gz")
    p.add_argument("--test", type=Path, help="test CSV (same columns, optional label)")
    p.add_argument(
        "--output", type=Path, required=True, help="output CSV, or directory with --dataset"
    )
    p.add_argument(
        "--alerts-per-week",
        type=float,
        default=None,
        help="target alert rate per node and week on the training data "
        f"(default {ModelConfig().decisions.alerts_per_week})",
    )
    p.add_argument(
        "--refit-every",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="refit on a sliding window as long as the training data every DAYS of test data, "
        "leaving out rows that alerted (default 0: fit once on the training data)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the isolation forest")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no per-entity lines, no progress bar"
    )
    return p


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    cfg = ModelConfig(random_state=args.seed)
    if args.alerts_per_week is not None:
        cfg = replace(cfg, decisions=replace(cfg.decisions, alerts_per_week=args.alerts_per_week))
    return cfg


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    cfg = config_from_args(args)
    if args.train is not None:
        if args.test is None:
            print("dcwatch backtest detect: --train needs --test", file=sys.stderr)
            return 2
        train, _ = read_frame(args.train)
        test, labels = read_frame(args.test)
        name = args.test.name
        name = name[: -len(TEST_SUFFIX)] if name.endswith(TEST_SUFFIX) else args.test.stem
        res = run_entity(name, train, test, labels, cfg, args.refit_every)
        write_output(res.output, args.output)
        if res.labels is not None:
            write_output(event_rows(res), args.output.with_suffix(".events.csv"))
        if res.counts is not None:
            y = res.labels if res.labels is not None else np.zeros(0, bool)
            best = ev.best_point_f1(y, res.output["score"].to_numpy())[0]
            print(format_metrics(ev.metrics_from_counts(res.counts), best))
        return 0

    entities = dataset_entities(args.dataset)
    if not entities:
        print(
            f"dcwatch backtest detect: no *{TRAIN_SUFFIX}/*{TEST_SUFFIX} pairs in {args.dataset}",
            file=sys.stderr,
        )
        return 2
    from tqdm import tqdm

    results = []
    bar = tqdm(entities, desc="backtest detect", unit="entity", disable=args.quiet, file=sys.stderr)
    for name, train_path, test_path in bar:
        bar.set_postfix_str(name)
        train, _ = read_frame(train_path)
        test, labels = read_frame(test_path)
        res = run_entity(name, train, test, labels, cfg, args.refit_every)
        write_output(res.output, args.output / f"{name}.csv")
        results.append(res)
        if res.counts is not None and not args.quiet:
            tqdm.write(
                f"{name}: {format_metrics(ev.metrics_from_counts(res.counts))}", file=sys.stdout
            )
    labelled = [event_rows(r) for r in results if r.labels is not None]
    if labelled:
        write_output(pd.concat(labelled, ignore_index=True), args.output / "events.csv")
    summary = summarise(results)
    if summary is not None:
        m, best = summary
        print(f"pooled over {len(results)} entities: {format_metrics(m, best)}")
    return 0
