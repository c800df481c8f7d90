"""Spread and significance: mean +- sd and the paired bootstrap, against numbers worked out by
hand and by simulation (coverage); per-row counts that recompute the metrics exactly; `ktt
compare` on real runs."""
import numpy as np
import pytest

from ktt.compare import mean_sd, paired_bootstrap, pooled
from ktt.hierarchy import Hierarchy
from ktt.metrics import evaluate, row_counts

RAGGED = Hierarchy.from_paths([("A", "B", "C"), ("A", "B"), ("A", "D", "E"), ("F",)])


def test_mean_and_sample_sd_by_hand():
    assert mean_sd([1, 2, 3, 4]) == pytest.approx((2.5, np.sqrt(5 / 3)))  # squares 2.25+.25+.25+2.25 over 3
    assert mean_sd([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_sd([])


def test_row_counts_recompute_the_metrics_by_hand():
    """True A>B, F, A>B>C; predicted A>B>C, A>D>E, A>B (tests/test_metrics.py works the sets out):
    shared 2, 0, 2; predicted 3, 3, 2; true 2, 1, 3; no leaf right."""
    t = RAGGED.encode([("A", "B"), ("F",), ("A", "B", "C")])
    p = RAGGED.encode([("A", "B", "C"), ("A", "D", "E"), ("A", "B")])
    c = row_counts(RAGGED, t, p)
    assert {k: v.tolist() for k, v in c.items()} == {"shared": [2, 0, 2], "predicted": [3, 3, 2], "true": [2, 1, 3],
                                                      "leaf_right": [0, 0, 0]}
    m = evaluate(RAGGED, t, p)
    assert pooled(c)["h_f1"] == pytest.approx(m["h_f1"]) == pytest.approx(2 * 4 / (8 + 6))
    assert pooled(c)["leaf_accuracy"] == m["leaf_accuracy"]


def counts(leaf_right, shared=None):
    leaf_right = np.asarray(leaf_right)
    shared = leaf_right * 3 if shared is None else np.asarray(shared)
    return {"shared": shared, "predicted": np.full(len(leaf_right), 3), "true": np.full(len(leaf_right), 3),
            "leaf_right": leaf_right}


def test_paired_bootstrap_by_hand():
    a = counts([1, 0, 1, 0])
    same = paired_bootstrap([a], [a], n_boot=300)
    assert all(r["diff"] == r["low"] == r["high"] == 0 and not r["significant"] for r in same.values())
    # B right on every row A misses: every resample differs by exactly the share A missed
    better = paired_bootstrap([counts([0, 0, 0, 0])], [counts([1, 1, 1, 1])], n_boot=300)
    assert better["leaf_accuracy"] == {"a": 0.0, "b": 1.0, "diff": 1.0, "low": 1.0, "high": 1.0, "significant": True}
    assert better["h_f1"]["diff"] == 1.0 and better["h_f1"]["significant"]
    # two rows, B wins one, ties the other: a resample's difference is 0, .5 or 1 with chance
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% points are 0 and 1: not significant
    two = paired_bootstrap([counts([0, 0])], [counts([1, 0])], n_boot=4000, seed=1)["leaf_accuracy"]
    assert (two["diff"], two["low"], two["high"], two["significant"]) == (0.5, 0.0, 1.0, False)
    with pytest.raises(ValueError, match="same test rows"):
        paired_bootstrap([counts([1, 0])], [counts([1, 0, 1])])
    with pytest.raises(ValueError, match=r"seeds of a side hold \[2, 3\] rows"):
        paired_bootstrap([counts([1, 0]), counts([1, 0, 1])], [counts([1, 0])] * 2)
    with pytest.raises(ValueError, match="resample 'rows'"):
        paired_bootstrap([a], [a], resample="rows")
    with pytest.raises(ValueError, match="n_boot must be a whole number above 0, not 0"):
        paired_bootstrap([a], [a], n_boot=0)
    with pytest.raises(ValueError, match="not a finite number"):
        paired_bootstrap([a], [{**a, "shared": np.array([1.0, np.nan, 1.0, 0.0])}])


def test_a_parent_run_names_its_runs(tracking):
    """``ktt train --seeds`` prints the parent run: comparing it names the runs to compare."""
    import mlflow

    from ktt.errors import NotFound
    from ktt.tracking import load_test_rows

    with mlflow.start_run() as parent:
        with mlflow.start_run(nested=True) as child:
            pass
    with pytest.raises(NotFound, match=f"parent of 1 runs and scored no test rows itself: compare its runs, {child.info.run_id}"):
        load_test_rows(parent.info.run_id)
    with pytest.raises(NotFound, match="logged no metrics/test_rows.parquet"):
        load_test_rows(child.info.run_id)


def test_seeds_pool_with_one_weight_per_text_by_hand():
    """2 seeds x 3 texts, one resample that draws text 0 twice, text 1 never, text 2 once: every
    seed's row of a text gets its text's weight."""
    side = {"shared": np.array([[2, 1, 0], [2, 0, 1]]), "predicted": np.array([[3, 2, 2], [3, 2, 1]]),
            "true": np.array([[2, 2, 3], [2, 2, 3]]), "leaf_right": np.array([[1, 0, 0], [1, 1, 0]])}
    w = np.array([[2.0, 0.0, 1.0]])
    # shared 2*(2+2) + 0*(1+0) + 1*(0+1) = 9; predicted 2*6 + 1*3 = 15; true 2*4 + 1*6 = 14;
    # leaf right 2*2 + 0 = 4 of 2 seeds x 3 drawn texts
    got = pooled(side, w)
    assert got["h_f1"] == pytest.approx([2 * 9 / (15 + 14)]) and got["leaf_accuracy"] == pytest.approx([4 / 6])
    # unweighted: every row once (shared 6, predicted 13, true 14, leaf right 3 of 6)
    assert pooled(side) == {"h_f1": pytest.approx(2 * 6 / 27), "leaf_accuracy": 0.5}
    # the two-stage draw: seed 0 twice, seed 1 never; then the same text weights
    # shared 2*(2*2 + 0*1 + 1*0) = 8; predicted 2*(6 + 2) = 16; true 2*(4 + 3) = 14; leaf right 2*2 of 2*3
    two = pooled(side, w, np.array([[2.0, 0.0]]))
    assert two["h_f1"] == pytest.approx([2 * 8 / 30]) and two["leaf_accuracy"] == pytest.approx([4 / 6])


def test_listing_the_same_runs_five_times_changes_nothing():
    """k copies of a run are one run: the seeds share each resample's text weights, so the
    interval is the one of a single copy (stacked rows made it narrower by about sqrt(k))."""
    rng = np.random.default_rng(3)
    a, b = counts(rng.integers(0, 2, 50)), counts(rng.integers(0, 2, 50))
    for how in ("texts", "seeds-and-texts"):
        once = paired_bootstrap([a], [b], n_boot=500, resample=how)
        assert paired_bootstrap([a] * 5, [b] * 5, n_boot=500, resample=how) == once
    # in the two-stage draw, distinct seeds do widen it
    c = counts(rng.integers(0, 2, 50))
    texts, both = (paired_bootstrap([a, c], [b, b], n_boot=2000, resample=how)["leaf_accuracy"]
                   for how in ("texts", "seeds-and-texts"))
    assert both["high"] - both["low"] > texts["high"] - texts["low"]


def simulated_coverage(resample: str | None, sets: int = 400, n: int = 300, seeds: int = 5) -> float:
    """How often the 95% interval of leaf accuracy B - A holds the true difference, over ``sets``
    simulated test sets of ``n`` texts scored by ``seeds`` seeds per model. Per text each model
    has a latent chance of being right, near 0 or 1 (Beta(.2, .08), so a text's outcome mostly
    agrees across seeds), half the time the text's shared difficulty (correlating the models),
    else its own draw (B's from Beta(.3, .08)); a seed's outcome is a Bernoulli draw of it. True
    difference: the population mean of p_b - p_a = .5 * (.3/.38 - .2/.28). ``resample`` None:
    the old way, every seed's rows stacked as independent rows."""
    rng = np.random.default_rng(0)
    truth, hits = 0.5 * (0.3 / 0.38 - 0.2 / 0.28), 0
    for i in range(sets):
        shared = rng.beta(0.2, 0.08, n)
        p_a = np.where(rng.random(n) < 0.5, shared, rng.beta(0.2, 0.08, n))
        p_b = np.where(rng.random(n) < 0.5, shared, rng.beta(0.3, 0.08, n))
        y_a, y_b = ((rng.random((seeds, n)) < p).astype(np.int64) for p in (p_a, p_b))
        sides = ([counts(y) for y in ys] if resample else [counts(ys.ravel())] for ys in (y_a, y_b))
        x = paired_bootstrap(*sides, n_boot=1000, seed=i, resample=resample or "texts")["leaf_accuracy"]
        hits += x["low"] <= truth <= x["high"]
    return hits / sets


def test_resampling_texts_covers_the_true_difference():
    """400 simulated test sets: texts resampled once for all seeds cover about 95% (measured
    94.75%); seeds and texts a little more (96.25%: this simulation has no training variance
    beyond the per-seed draws, already in the texts' spread); stacked copies far less (69.25%)."""
    assert 0.93 <= simulated_coverage("texts") <= 0.97
    assert 0.93 <= simulated_coverage("seeds-and-texts") <= 0.99
    assert simulated_coverage(None) < 0.8


def test_every_run_of_both_sides_scored_the_same_rows(monkeypatch):
    """A run logs no text per test row, only its true leaf: the leaves and their number must match."""
    from ktt import tracking
    from ktt.errors import BadValue

    leaves = {"a": [1, 2, 3], "b": [1, 2, 3], "short": [1, 2], "moved": [1, 3, 2]}
    monkeypatch.setattr(tracking.comparisons, "load_test_rows",
                        lambda r: {**counts([1, 0, 1][:len(leaves[r])]), "true_leaf": np.array(leaves[r])})
    assert tracking.bootstrap_runs(["a", "a"], ["b", "b"], n_boot=100)["leaf_accuracy"]["diff"] == 0
    with pytest.raises(BadValue, match="^run short scored 2 test rows, run a 3: compare runs on the same test rows$"):
        tracking.bootstrap_runs(["a", "short"], ["b", "b"])
    with pytest.raises(BadValue, match=r"^run moved and run a differ in the true leaf of test row 1 \(of 3\)"):
        tracking.bootstrap_runs(["a", "a"], ["b", "moved"])


def test_ktt_compare_two_real_runs(tracking, bigbasket_small, tmp_path):
    import subprocess
    import sys

    import mlflow

    from ktt.train import train

    runs = [train(m, "bb_small", datasets_root=bigbasket_small, weights_root=tmp_path, log_model=False,
                  overrides=o).run_id for m, o in (("tfidf_hsgd", {}), ("tfidf_hsgd", {"seed": 1}), ("tfidf_lsgd", {}))]
    out = subprocess.run([sys.executable, "-m", "ktt", "compare", runs[0], runs[2], "--n-boot", "500"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "h_f1: A " in out.stdout and "95% interval" in out.stdout
    assert out.stdout.startswith("B - A over 500 resamples (test texts resampled, the same draw for every seed of "
                                 "both sides; MLflow run ")
    # the same runs listed five times: the same interval; seeds resampled too: said so
    five = subprocess.run([sys.executable, "-m", "ktt", "compare", ",".join([runs[0]] * 5), ",".join([runs[2]] * 5),
                           "--n-boot", "500"], capture_output=True, text=True, timeout=300)
    assert five.returncode == 0 and five.stdout.splitlines()[1:] == out.stdout.splitlines()[1:]
    two = subprocess.run([sys.executable, "-m", "ktt", "compare", f"{runs[0]},{runs[1]}", f"{runs[2]},{runs[2]}",
                          "--resample", "seeds-and-texts"], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0 and ("(each side's seeds resampled, then the test texts, the same text draw for every "
                                    "seed of both sides; MLflow run ") in two.stdout
    logged = mlflow.search_runs(filter_string="tags.`ktt.stage` = 'compare'", search_all_experiments=True)
    assert len(logged) == 3 and set(logged["params.resample"]) == {"texts", "seeds-and-texts"} and {"metrics.h_f1_low", "metrics.leaf_accuracy_high"} <= set(logged.columns)
    # a run against itself: no difference; two sides of unequal length refused plainly
    same = subprocess.run([sys.executable, "-m", "ktt", "compare", runs[0], runs[0]], capture_output=True, text=True)
    assert "difference +0.0000, 95% interval [+0.0000, +0.0000]: not significant" in same.stdout
    bad = subprocess.run([sys.executable, "-m", "ktt", "compare", f"{runs[0]},{runs[1]}", runs[2]],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "2 runs against 1" in bad.stderr and "Traceback" not in bad.stderr


def test_an_experiment_over_seeds_reports_spread_and_intervals(tracking, tmp_path):
    """smoke.yaml with three seeds: one run per model holding one run per seed; the table shows
    mean ± sd (checked against the seeds' own runs) and the other model's interval against the best."""
    import mlflow
    from mlflow import MlflowClient

    from conftest import ROOT
    from ktt.compare import mean_sd
    from ktt.experiment import run_experiment

    parent, rows = run_experiment(ROOT / "experiments" / "smoke.yaml", datasets_root=tmp_path / "d",
                                  weights_root=tmp_path / "w", seeds="0,1,2")
    client = MlflowClient()
    for r in rows:
        seeds = [client.get_run(run) for run in r["runs"]]
        assert [s.data.tags["ktt.seed"] for s in seeds] == ["0", "1", "2"]
        assert all(s.data.tags["mlflow.parentRunId"] == r["run_id"] for s in seeds)
        assert (r["test_h_f1"], r["test_h_f1_sd"]) == pytest.approx(mean_sd([s.data.metrics["test_h_f1"] for s in seeds]))
        assert client.get_run(r["run_id"]).data.metrics["test_h_f1_sd"] == pytest.approx(r["test_h_f1_sd"])
    assert "vs" not in rows[0] and rows[1]["vs_model"] == rows[0]["model"]
    # every seed scores the same test rows, so pooled leaf accuracy is the mean over seeds
    leaf = rows[1]["vs"]["leaf_accuracy"]
    assert leaf["diff"] == pytest.approx(rows[1]["test_leaf_accuracy"] - rows[0]["test_leaf_accuracy"])
    vs = rows[1]["vs"]["h_f1"]
    assert vs["low"] <= vs["diff"] <= vs["high"]
    table = mlflow.artifacts.load_text(f"runs:/{parent}/ranking.md")
    assert " ± " in table and "Δ hF1 vs " in table and "[95% CI]" in table
    assert mlflow.artifacts.load_dict(f"runs:/{parent}/intervals.json")[rows[1]["model"]]["h_f1"]["low"] == vs["low"]


def test_own_seeds_and_a_baseline_per_model_pair_on_the_seeds_both_ran(tracking, tmp_path):
    """A model's own ``seeds:`` replaces the file's; with ``baseline`` a mapping, each model is
    compared with its own reference over the seeds both ran, here only seed 1."""
    import yaml

    from conftest import ROOT
    from ktt.experiment import ranking_table, run_experiment
    from ktt.tracking import bootstrap_runs

    spec = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    spec.update(models={"tfidf_lsgd": {"seeds": [0, 1]}, "tfidf_hsgd": {"seeds": [1, 2]}},
                baseline={"tfidf_hsgd": "tfidf_lsgd"}, data={"generate": {"rows": 1500, "noise": 0.05}})
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
    _, rows = run_experiment(tmp_path / "e.yaml", datasets_root=tmp_path / "d", weights_root=tmp_path / "w")
    by = {r["model"]: r for r in rows}
    assert by["tfidf_lsgd"]["seeds"] == [0, 1] and by["tfidf_hsgd"]["seeds"] == [1, 2]
    assert "vs" not in by["tfidf_lsgd"] and by["tfidf_hsgd"]["vs_seeds"] == [1]
    assert by["tfidf_hsgd"]["vs"] == bootstrap_runs([by["tfidf_lsgd"]["runs"][1]], [by["tfidf_hsgd"]["runs"][0]])
    table = ranking_table(rows, "test_h_f1")
    assert "Δ hF1 vs tfidf_lsgd [95% CI]" in table and "(reference)" in table
