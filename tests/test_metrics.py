import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from ktt.hierarchy import Hierarchy
from ktt.metrics import evaluate, level_table

TOY = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])


def test_perfect_predictions(bigbasket):
    y = bigbasket.test.codes
    m = evaluate(bigbasket.hierarchy, y, y)
    assert all(m[k] == 1.0 for k in ("leaf_accuracy", "path_accuracy", "h_precision", "h_recall", "h_f1"))
    assert m["violation_rate"] == 0.0


def test_hierarchical_partial_credit():
    # true A>a1; predicted A>a2: right parent, wrong leaf -> hP = hR = 1/2
    t, p = TOY.encode([("A", "a1")]), TOY.encode([("A", "a2")])
    m = evaluate(TOY, t, p)
    assert m["h_precision"] == pytest.approx(0.5) and m["h_recall"] == pytest.approx(0.5)
    assert m["L1_accuracy"] == 1.0 and m["leaf_accuracy"] == 0.0
    # predicted B>b1: nothing shared
    assert evaluate(TOY, t, TOY.encode([("B", "b1")]))["h_f1"] == 0.0


def test_violations_counted_and_ancestors_of_each_prediction_used():
    t = TOY.encode([("A", "a1"), ("A", "a1")])
    p = t.copy()
    p[1, 1] = TOY.encode([("B", "b1")])[0, 1]  # level-2 prediction under the other parent
    m = evaluate(TOY, t, p)
    assert m["violation_rate"] == 0.5
    # row 2 predicts {A, B, b1} against {A, a1}: 1 of 3 predicted right, 1 of 2 true found
    assert m["h_precision"] == pytest.approx((2 + 1) / (2 + 3))
    assert m["h_recall"] == pytest.approx((2 + 1) / (2 + 2))


def test_matches_sklearn_on_real_noise(bigbasket):
    rng = np.random.default_rng(0)
    y = bigbasket.test.codes
    pred = y.copy()
    flip = rng.random(len(y)) < 0.3
    pred[flip] = bigbasket.hierarchy.leaf_paths()[rng.integers(bigbasket.hierarchy.n_leaves, size=flip.sum())]
    m = evaluate(bigbasket.hierarchy, y, pred)
    for d in range(3):
        assert m[f"L{d + 1}_accuracy"] == pytest.approx(accuracy_score(y[:, d], pred[:, d]))
        assert m[f"L{d + 1}_macro_f1"] == pytest.approx(f1_score(y[:, d], pred[:, d], average="macro"))
    assert m["violation_rate"] == 0.0  # whole leaf paths were swapped in
    assert 0 < m["h_f1"] < 1 and m["h_f1"] >= m["leaf_accuracy"]
    assert "| 3 | 597 |" in level_table(bigbasket.hierarchy, m)


def test_shape_errors():
    with pytest.raises(ValueError, match="expected two"):
        evaluate(TOY, np.zeros((3, 2), int), np.zeros((2, 2), int))


def test_level_table_exactly():

    h = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])
    m = {"L1_accuracy": 1.0, "L1_macro_f1": 0.5, "L1_micro_f1": 0.25, "L2_accuracy": 0.125, "L2_macro_f1": 0.0625,
         "L2_micro_f1": 0.75, "h_precision": 0.1, "h_recall": 0.2, "h_f1": 0.3, "path_accuracy": 0.4,
         "violation_rate": 0.0}
    assert level_table(h, m) == (
        "| level | classes | accuracy | macro F1 | micro F1 |\n"
        "|---|---|---|---|---|\n"
        "| 1 | 2 | 1.0000 | 0.5000 | 0.2500 |\n"
        "| 2 | 3 | 0.1250 | 0.0625 | 0.7500 |\n"
        "\n"
        "hierarchical P/R/F1: 0.1000 / 0.2000 / 0.3000; path accuracy 0.4000; violation rate 0.0000\n")


def test_evaluate_errors_exactly():
    h = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])
    for t, p, message in [
        (np.zeros((2, 2)), np.zeros((3, 2)), "expected two (n, 2) arrays, got (2, 2) and (3, 2)"),
        (np.zeros((2, 3)), np.zeros((2, 3)), "expected two (n, 2) arrays, got (2, 3) and (2, 3)"),
        (np.zeros(2), np.zeros(2), "expected two (n, 2) arrays, got (2,) and (2,)"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "cannot evaluate zero rows"),
    ]:
        with pytest.raises(ValueError) as err:
            evaluate(h, t, p)
        assert str(err.value) == message


# -- paths of different lengths and the stopping threshold, by hand -----------------------
RAGGED = Hierarchy.from_paths([("A", "B", "C"), ("A", "B"), ("A", "D", "E"), ("F",)])


def test_variable_depth_metrics_by_hand():
    """True: A>B, F, A>B>C. Predicted: A>B>C (too deep), A>D>E (wrong), A>B (ends early)."""
    t = RAGGED.encode([("A", "B"), ("F",), ("A", "B", "C")])
    p = RAGGED.encode([("A", "B", "C"), ("A", "D", "E"), ("A", "B")])
    m = evaluate(RAGGED, t, p)
    # level 1 (A, F, A vs A, A, A): A has P 2/3, R 1 -> F1 .8; F has F1 0
    assert m["L1_accuracy"] == pytest.approx(2 / 3) and m["L1_macro_f1"] == pytest.approx(0.4)
    # level 2: rows 1 and 3 reach it and are right; row 2's prediction reaches it (A>D) where the
    # truth ended: wrong there, 2/3; a false positive of A>D (F1 0), A>B has F1 1; micro: tp 2, fp 1, fn 0
    assert m["L2_accuracy"] == pytest.approx(2 / 3) and m["L2_macro_f1"] == pytest.approx(0.5)
    assert m["L2_micro_f1"] == pytest.approx(0.8)
    # level 3: every row reaches it by truth or prediction, and all three are wrong (row 1 too deep,
    # row 2 wrong, row 3 ended above); no real class is right
    assert m["L3_accuracy"] == 0.0 and m["L3_macro_f1"] == 0.0
    # ends at the right class: none of the three; hierarchical sets: true {A,AB},{F},{A,AB,ABC} (6),
    # predicted {A,AB,ABC},{A,AD,ADE},{A,AB} (8), shared 2 + 0 + 2
    assert m["leaf_accuracy"] == 0.0 and m["path_accuracy"] == 0.0
    assert m["h_precision"] == pytest.approx(4 / 8) and m["h_recall"] == pytest.approx(4 / 6)
    assert m["violation_rate"] == 0.0
    perfect = evaluate(RAGGED, t, t)
    assert all(v == 1.0 for k, v in perfect.items() if k != "violation_rate")


def test_a_prediction_too_deep_is_wrong_at_every_level_it_adds():
    """The issue's case: truth A>B and A>B; predicted A>B>C (too deep) and A>B. Path accuracy .5;
    counting only rows whose truth reaches a level showed 1.0 at all three levels."""
    t = RAGGED.encode([("A", "B"), ("A", "B")])
    p = RAGGED.encode([("A", "B", "C"), ("A", "B")])
    m = evaluate(RAGGED, t, p)
    assert m["path_accuracy"] == 0.5
    assert m["L1_accuracy"] == m["L2_accuracy"] == 1.0
    assert m["L3_accuracy"] == 0.0  # only row 1 reaches level 3 (by its prediction), and it is wrong there


def test_an_unreached_level_scores_one_not_nan():
    """No true and no predicted path reaches level 3: nothing there can be wrong."""
    t = RAGGED.encode([("A", "B"), ("F",)])
    m = evaluate(RAGGED, t, t)
    assert m["L3_accuracy"] == m["L3_macro_f1"] == m["L3_micro_f1"] == 1.0
    assert not any(np.isnan(v) for v in m.values())


def test_stop_curve_by_hand():
    """Two rows, both predicted A>D>E, true A>D>E and A>B>C; confidences .9/.6/.3 and .8/.4/.2."""
    from ktt.metrics import stop_curve

    t = RAGGED.encode([("A", "D", "E"), ("A", "B", "C")])
    p = RAGGED.encode([("A", "D", "E"), ("A", "D", "E")])
    scores = [np.array([[.9, .1], [.8, .2]]), np.array([[0, .6, 0], [0, .4, 0]]), np.array([[0, 0, .3, 0], [0, 0, .2, 0]])]
    rows = {r["threshold"]: r for r in stop_curve(RAGGED, t, p, scores, [0.0, 0.25, 0.5, 0.85, 0.95])}
    # 0: everything answered: 6 classes, 4 right (A,AD,ADE; A); truth has 6
    assert rows[0.0]["coverage"] == 1.0 and rows[0.0]["h_precision"] == pytest.approx(4 / 6)
    assert rows[0.0]["full"] == 1.0 and rows[0.0]["none"] == 0.0
    # .25: row 1 keeps 3 levels, row 2 keeps 2 (A, AD): 5 answered, 4 right
    assert rows[0.25]["coverage"] == pytest.approx(5 / 6) and rows[0.25]["h_precision"] == pytest.approx(4 / 5)
    # .5: row 1 keeps A, AD; row 2 keeps A: 3 answered, all right; recall 3/6
    assert rows[0.5]["h_precision"] == 1.0 and rows[0.5]["h_recall"] == pytest.approx(0.5)
    assert rows[0.5]["full"] == 0.0
    # .85: row 1 keeps A, row 2 nothing; .95: nothing at all (precision undefined)
    assert rows[0.85]["coverage"] == pytest.approx(1 / 6) and rows[0.85]["none"] == 0.5
    assert rows[0.95]["coverage"] == 0.0 and np.isnan(rows[0.95]["h_precision"]) and rows[0.95]["h_recall"] == 0.0


def test_confusions_on_paths_of_any_depth():
    """True F (ends at level 1), predicted A > B (ends at level 2): a mistake at levels 1 and 2;
    at level 3 both paths have ended, so nothing is counted there."""
    from ktt.metrics import confusion_summary

    t, p = RAGGED.encode([("F",)]), RAGGED.encode([("A", "B")])
    table = confusion_summary(RAGGED, t, p)
    assert table.values.tolist() == [[1, "F", "A", 1], [2, "F", "A > B", 1]]
