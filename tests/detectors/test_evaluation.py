"""Detection metrics on tiny hand-made label/prediction arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from dcwatch.detectors.backtest import evaluation as ev

#                 0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
PRED = np.array([0, 1, 0, 0, 0, 1, 0, 0, 0, 0])


def test_runs() -> None:
    assert ev.runs(np.array([0, 1, 1, 0, 1])).tolist() == [[1, 3], [4, 5]]
    assert ev.runs(np.array([1, 1])).tolist() == [[0, 2]]
    assert ev.runs(np.zeros(3)).shape == (0, 2)
    assert ev.runs(np.zeros(0)).shape == (0, 2)


def test_point_adjust_fills_hit_events_only() -> None:
    assert ev.point_adjust(LABELS, PRED).astype(int).tolist() == [0, 1, 1, 1, 0, 1, 0, 0, 0, 0]


def test_metrics_known_answers() -> None:
    m = ev.evaluate(LABELS, PRED, days=2.0)
    # point-wise: tp 1 (index 1), fp 1 (index 5), fn 4
    assert m.point_precision == pytest.approx(0.5)
    assert m.point_recall == pytest.approx(0.2)
    assert m.point_f1 == pytest.approx(2 * 0.5 * 0.2 / 0.7)
    # point-adjusted: first event fully detected -> tp 3, fp 1, fn 2
    assert m.pa_precision == pytest.approx(0.75)
    assert m.pa_recall == pytest.approx(0.6)
    assert m.pa_f1 == pytest.approx(2 / 3)
    # events: [1,4) hit, [6,8) missed; flagged runs [1,2) true, [5,6) false
    assert m.event_recall == pytest.approx(0.5)
    assert m.event_precision == pytest.approx(0.5)
    assert m.event_f1 == pytest.approx(0.5)
    # composite: harmonic mean of event recall 0.5 and point precision 0.5
    assert m.composite_f1 == pytest.approx(0.5)
    # one false run over two days
    assert m.false_alerts_per_day == pytest.approx(0.5)


def test_perfect_and_empty_predictions() -> None:
    perfect = ev.evaluate(LABELS, LABELS, days=1.0)
    assert perfect.point_f1 == perfect.event_f1 == perfect.composite_f1 == pytest.approx(1.0)
    assert perfect.false_alerts_per_day == 0.0
    none = ev.evaluate(LABELS, np.zeros_like(LABELS), days=1.0)
    assert none.point_f1 == none.composite_f1 == none.event_f1 == 0.0
    assert none.false_alerts_per_day == 0.0


def test_no_events_only_false_alerts() -> None:
    m = ev.evaluate(np.zeros(6), np.array([1, 1, 0, 1, 0, 0]), days=0.5)
    assert m.event_recall == 0.0 and m.composite_f1 == 0.0
    assert m.false_alerts_per_day == pytest.approx(4.0)  # 2 runs in half a day


def test_counts_pool_by_addition() -> None:
    a = ev.counts(LABELS, PRED, days=1.0)
    b = ev.counts(np.array([1, 1, 0]), np.array([1, 0, 1]), days=1.0)
    pooled = ev.metrics_from_counts(a + b)
    # tp 2, fp 2, fn 5; events 3, hit 2; flagged runs 4 of which 2 true
    assert pooled.point_precision == pytest.approx(0.5)
    assert pooled.point_recall == pytest.approx(2 / 7)
    assert pooled.event_recall == pytest.approx(2 / 3)
    assert pooled.event_precision == pytest.approx(0.5)
    assert pooled.false_alerts_per_day == pytest.approx(1.0)


def test_best_point_f1() -> None:
    y = np.array([0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.8, 0.85])
    f1, thr = ev.best_point_f1(y, s)
    assert f1 == pytest.approx(0.8)  # top 3: tp 2, 3 flagged, 2 positives
    assert thr == pytest.approx(0.8)


def test_best_point_f1_respects_ties() -> None:
    # The two tied top scores can only be flagged together.
    f1, _ = ev.best_point_f1(np.array([1, 0, 0]), np.array([1.0, 1.0, 0.0]))
    assert f1 == pytest.approx(2 / 3)
    assert ev.best_point_f1(np.zeros(3), np.arange(3.0))[0] == 0.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        ev.counts(np.zeros(3), np.zeros(4))


def test_detection_delay_per_event() -> None:
    #                  0  1  2  3  4  5  6  7  8  9 10 11
    y = np.array([0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0])
    p = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0])
    # events [1,5) first flagged at 3 -> 2 steps; [6,8) missed; [9,11) at once -> 0 steps.
    # The flag at 0, before the first event, is a false alert, not an early detection.
    assert ev.event_delays(y, p).tolist() == [2, -1, 0]
    m = ev.evaluate(y, p, days=1.0)
    assert m.events_missed == 1
    assert m.mean_delay_steps == pytest.approx(1.0)
    c = ev.counts(y, p, days=1.0, step_seconds=300.0)
    assert ev.metrics_from_counts(c).mean_delay_seconds == pytest.approx(300.0)


def test_detection_delay_pools_over_events_not_entities() -> None:
    a = ev.counts(np.array([1, 1, 1, 1]), np.array([0, 0, 0, 1]), days=1.0, step_seconds=60.0)
    b = ev.counts(np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]), days=1.0, step_seconds=60.0)
    m = ev.metrics_from_counts(a + b)
    assert m.mean_delay_steps == pytest.approx(1.0)  # (3 + 0 + 0) / 3 events hit
    assert m.mean_delay_seconds == pytest.approx(60.0)
    none = ev.evaluate(np.array([0, 1, 1]), np.zeros(3), days=1.0)
    assert np.isnan(none.mean_delay_steps) and none.events_missed == 1


def test_early_event_recall_counts_events_caught_within_the_target_over_all_events() -> None:
    k = ev.EARLY_STEPS
    y = np.zeros(3 * (k + 10), dtype=int)
    p = np.zeros_like(y)
    late, early, missed = 0, k + 10, 2 * (k + 10)
    y[late : late + k + 5] = 1
    p[late + k + 1] = 1  # one step past the target
    y[early : early + k + 5] = 1
    p[early + k] = 1  # at the target: still early
    y[missed : missed + 3] = 1
    m = ev.evaluate(y, p, days=1.0)
    assert m.events_missed == 1
    assert m.early_event_recall == pytest.approx(1 / 3)
    pooled = ev.metrics_from_counts(ev.counts(y, p, 1.0) + ev.counts(y[early:], p[early:], 1.0))
    assert pooled.early_event_recall == pytest.approx(2 / 5)
