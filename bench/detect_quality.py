"""Detection quality of dcwatch's default detector next to two baselines, on every dataset.

For each dataset directory under ``--datasets`` (default ../shared/datasets/detect) this runs
``dcwatch backtest detect --dataset DIR`` (the defaults, i.e. the live service's model), and the
baselines on the same files, and evaluates every method the same way from its
``timestamp,score,is_anomaly`` output and the test labels:

- ``IsolationForest()``: scikit-learn defaults on the raw metric columns;
- ``PCA error``: columns min-max scaled on training, PCA keeping 99 % of the variance (at most d - 1
  components), squared reconstruction error (of the variants tried, the closest to the issue's
  reference numbers on smd6);
- ``random``: uniform random scores (shows how much point adjustment flatters noise).

The baselines flag test points whose score exceeds the 99.5th percentile of their training scores.
Metrics pool all entities of a dataset. "best-threshold point F1" uses the labels to choose one
threshold over the pooled scores: it is an oracle measure of the ranking, not what would alert.

With ``--lofo`` it also backtests every candidate setting of ``bench/detect_lofo.py`` on every
family and adds the leave-one-family-out table: each default is chosen on two families and measured
on the third.

Run by hand:  .venv/bin/python bench/detect_quality.py [--datasets DIR] [--only NAME ...] [--lofo]
Writes bench/reports/detect_quality.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import MinMaxScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import detect_lofo  # noqa: E402

from dcwatch.detectors.backtest import detect as backtest_detect  # noqa: E402
from dcwatch.detectors.backtest import evaluation as ev  # noqa: E402
from dcwatch.detectors.backtest.detect import dataset_entities, read_frame, test_days  # noqa: E402

DEFAULT_DATASETS = REPO.parent / "shared" / "datasets" / "detect"
REPORT = REPO / "bench" / "reports" / "detect_quality.md"
BASELINE_QUANTILE = 99.5

Baseline = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _raw(frame: pd.DataFrame, fill: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    x = frame.ffill().to_numpy(dtype=float)
    if fill is None:
        fill = np.nan_to_num(np.nanmedian(x, axis=0))
    return np.where(np.isnan(x), fill, x), fill


def isolation_forest(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = IsolationForest(random_state=0).fit(train)
    return -model.score_samples(train), -model.score_samples(test)


def pca_error(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = MinMaxScaler().fit(train)
    a, b = scaler.transform(train), scaler.transform(test)
    k = PCA(n_components=0.99).fit(a).n_components_ if a.shape[1] > 1 else 0
    k = min(k, a.shape[1] - 1)
    if k == 0:
        mean = a.mean(axis=0)
        return ((a - mean) ** 2).sum(axis=1), ((b - mean) ** 2).sum(axis=1)
    pca = PCA(n_components=k).fit(a)

    def err(z: np.ndarray) -> np.ndarray:
        return ((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(axis=1)

    return err(a), err(b)


def random_scores(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random(len(train)), rng.random(len(test))


BASELINES: dict[str, Baseline] = {
    "IsolationForest() raw, train p99.5": isolation_forest,
    "PCA error, train p99.5": pca_error,
    "random scores, train p99.5": random_scores,
}


@dataclass
class Row:
    dataset: str
    method: str
    metrics: ev.Metrics
    best_f1: float
    seconds: float


Output = tuple[pd.DataFrame, np.ndarray, pd.DataFrame]  # (score/is_anomaly, labels, test frame)


def evaluate_outputs(outputs: list[Output]) -> tuple[ev.Metrics, float]:
    """Pooled metrics and best-threshold point F1 from (output, labels, test frame) per entity."""
    total = ev.Counts()
    for out, y, test in outputs:
        if len(out) != len(y):
            raise ValueError(f"output has {len(out)} rows, labels {len(y)}")
        ts = np.asarray(test.index, dtype=float)
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else None
        pred = out["is_anomaly"].to_numpy().astype(bool)
        total = total + ev.counts(y, pred, test_days(ts), step)
    y_all = np.concatenate([y for _, y, _ in outputs])
    s_all = np.concatenate([out["score"].to_numpy(dtype=float) for out, _, _ in outputs])
    return ev.metrics_from_counts(total), ev.best_point_f1(y_all, s_all)[0]


Entity = tuple[str, pd.DataFrame, pd.DataFrame, np.ndarray]  # name, train, test, labels


def load_dataset(directory: Path) -> list[Entity]:
    data = []
    for entity, train_path, test_path in dataset_entities(directory):
        train, _ = read_frame(train_path)
        test, labels = read_frame(test_path)
        if labels is None:
            raise SystemExit(f"{test_path}: no label column, cannot evaluate")
        data.append((entity, train, test, labels))
    return data


def run_dataset(directory: Path, workdir: Path) -> list[Row]:
    name = directory.name
    data = load_dataset(directory)
    rows = []

    out_dir = workdir / name
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = backtest_detect.main(["--dataset", str(directory), "--output", str(out_dir), "-q"])
    if rc != 0:
        raise SystemExit(f"backtest detect failed on {directory} (exit {rc})")
    seconds = time.perf_counter() - t0
    outputs = []
    for entity, _, test, labels in data:
        outputs.append((pd.read_csv(out_dir / f"{entity}.csv"), labels, test))
    m, best = evaluate_outputs(outputs)
    rows.append(Row(name, "dcwatch defaults", m, best, seconds))

    for method, fn in BASELINES.items():
        t0 = time.perf_counter()
        outputs = []
        for _entity, train, test, labels in data:
            a, fill = _raw(train)
            b, _ = _raw(test.reindex(columns=train.columns), fill)
            s_train, s_test = fn(a, b)
            threshold = np.percentile(s_train, BASELINE_QUANTILE)
            out = pd.DataFrame({"score": s_test, "is_anomaly": (s_test > threshold).astype(int)})
            outputs.append((out, labels, test))
        m, best = evaluate_outputs(outputs)
        rows.append(Row(name, method, m, best, time.perf_counter() - t0))
    return rows


HEADER = (
    "| dataset | method | point F1 | best-threshold point F1 (oracle) | point-adjusted F1 "
    "| composite F1 | event F1 | false alerts / entity-day | point P / R | event P / R "
    "| mean delay, steps (time) | events caught within "
    f"{ev.EARLY_STEPS} steps | events missed | time |"
)


def delay(m: ev.Metrics) -> str:
    """Mean detection delay over the events caught, in steps and minutes."""
    if np.isnan(m.mean_delay_steps):
        return "n/a"
    return f"{m.mean_delay_steps:.1f} ({m.mean_delay_seconds / 60:.0f} min)"


def table(rows: list[Row]) -> str:
    lines = [HEADER, "|" + "---|" * 2 + "---:|" * 12]
    for r in rows:
        m = r.metrics
        lines.append(
            f"| {r.dataset} | {r.method} | {m.point_f1:.3f} | {r.best_f1:.3f} | {m.pa_f1:.3f} "
            f"| {m.composite_f1:.3f} | {m.event_f1:.3f} | {m.false_alerts_per_day:.2f} "
            f"| {m.point_precision:.2f} / {m.point_recall:.2f} "
            f"| {m.event_precision:.2f} / {m.event_recall:.2f} | {delay(m)} "
            f"| {m.early_event_recall:.2f} | {m.events_missed} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--datasets",
        type=Path,
        default=DEFAULT_DATASETS,
        help="directory holding one folder per detection dataset",
    )
    p.add_argument("--only", nargs="*", default=None, help="dataset folder names to run")
    p.add_argument("--report", type=Path, default=REPORT)
    p.add_argument(
        "--lofo", action="store_true", help="also the leave-one-family-out choice of defaults"
    )
    p.add_argument("--lofo-only", action="store_true", help="only the leave-one-family-out part")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dcwatch_lofo.json")
    args = p.parse_args(argv)
    dirs = sorted(d for d in args.datasets.iterdir() if d.is_dir() and dataset_entities(d))
    if args.only:
        dirs = [d for d in dirs if d.name in args.only]
    if not dirs:
        print(f"no detection datasets under {args.datasets}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    lofo = ""
    if args.lofo or args.lofo_only:
        results = detect_lofo.evaluate_grid({d.name: load_dataset(d) for d in dirs}, args.cache)
        lofo = (
            "\n## Leave-one-family-out choice of the defaults\n\n"
            f"{detect_lofo.__doc__.split(chr(10) * 2)[1]}\n\n"
            + detect_lofo.lofo_table(results)
            + "\n\nEvery candidate on every family (dev numbers):\n\n"
            + detect_lofo.grid_table(results)
            + "\n\nAdopted in earlier rounds (dev numbers):\n\n"
            + detect_lofo.ADOPTED
            + "\n\nTried and removed (dev numbers):\n\n"
            + detect_lofo.REMOVED
        )
        print(lofo, flush=True)
        if args.lofo_only:
            return 0
    with tempfile.TemporaryDirectory(prefix="detect_quality_") as tmp:
        for d in dirs:
            print(f"== {d.name}", file=sys.stderr, flush=True)
            rows += run_dataset(d, Path(tmp))
            print(table([r for r in rows if r.dataset == d.name]), flush=True)
    try:
        shown = str(Path("..") / args.datasets.resolve().relative_to(REPO.parent))
    except ValueError:
        shown = str(args.datasets)
    text = (
        "# Detection quality: dcwatch defaults vs baselines\n\n"
        f"Datasets: `{shown}` ({', '.join(d.name for d in dirs)}). Produced by "
        "`bench/detect_quality.py`; every method is scored from its `timestamp,score,is_anomaly` "
        "output the same way, metrics pooled over each dataset's entities. Baselines flag "
        f"scores above the {BASELINE_QUANTILE}th percentile of their training scores; dcwatch "
        "uses its own threshold, calibrated on training scores only. Best-threshold point F1 "
        "chooses one threshold over the pooled scores with the labels (an oracle number). "
        "Composite F1 = harmonic mean of event recall and point precision; false alerts = "
        "flagged runs overlapping no labelled event; mean delay = steps from a caught event's "
        "start to its first alerted point (missed events are counted, not averaged); events "
        f"caught within {ev.EARLY_STEPS} steps = share of all labelled events alerted at most "
        f"{ev.EARLY_STEPS} steps after their start (a few long events caught late set the mean "
        "delay; this counts the incidents heard of in time).\n\n" + table(rows) + "\n" + lofo
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(f"\nwrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
