"""Catalog scale: sparse TF-IDF scoring, exact path search, the catalog generator, by hand and on real data."""
from pathlib import Path

import numpy as np
import pytest

from ktt import registry
from ktt.hierarchy import Hierarchy
from ktt.sparse import Csr, LinearBlocks, NgramIndex, NodeClassifiers, quantize, ragged_range, tfidf

# level 1 {A, B}; level 2 {a1, a2, a3} under A, {b1, b2} under B
H = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("A", "a3"), ("B", "b1"), ("B", "b2")])


def csr(rows, n_features):
    """CSR from ``[{feature: value}, ...]``."""
    indptr, indices, data = [0], [], []
    for r in rows:
        for f in sorted(r):
            indices.append(f)
            data.append(r[f])
        indptr.append(len(indices))
    return Csr(np.array(indptr), np.array(indices), np.array(data, np.float32), (len(rows), n_features))


def toy_blocks(loss="modified_huber"):
    """Block 0: root over {A, B}, one decision (B): w = {f0: 2, f1: -1}, b = 0.
    Block 1: A over {a1, a2, a3}, three decisions: a1 {f0: 1}, a2 {f2: 3}, a3 {} ; biases -0.5, -1, 0.2.
    B has one child seen (b1): no block."""
    fits = [[(np.array([0, 1]), np.array([2.0, -1.0]), 0.0)],
            [(np.array([0]), np.array([1.0]), -0.5), (np.array([2]), np.array([3.0]), -1.0),
             (np.array([], int), np.array([]), 0.2)]]
    blocks = LinearBlocks.from_fits(fits, [2, 3], 3, loss)
    return NodeClassifiers(H, blocks, level=[0, 1], parent=[-1, 0], children=[0, 1, 0, 1, 2],
                           single_level=[1], single_parent=[1], single_child=[3])


def test_linear_blocks_by_hand():
    nodes = toy_blocks()
    x = csr([{0: 0.25}, {1: 1.0, 2: 0.5}], 3)
    # row 0: root d = 0.5 -> P(B) = (0.5 + 1) / 2 = .75; A's block d = (-0.25, -1, 0.2) -> (.375, 0, .6) / .975
    # row 1: root d = -1 -> P(B) = 0; A's block d = (-0.5, 0.5, 0.2) -> (.25, .75, .6) / 1.6
    p = nodes.blocks.proba(x)
    np.testing.assert_allclose(p, [[.25, .75, .375 / .975, 0, .6 / .975], [1, 0, .25 / 1.6, .75 / 1.6, .6 / 1.6]],
                               rtol=1e-6)
    # pairs (row 1, A), (row 0, A), (row 0, root): the classes above 0 alone (row 0's a2 is 0)
    got, pair, local = nodes.blocks.pair_proba(x, np.array([1, 0, 0]), np.array([1, 1, 0]))
    assert pair.tolist() == [0, 0, 0, 1, 1, 2, 2] and local.tolist() == [0, 1, 2, 0, 2, 0, 1]
    np.testing.assert_allclose(got, [*p[1, 2:], p[0, 2], p[0, 4], *p[0, :2]], rtol=1e-6)
    cond = nodes.conditional(x)
    np.testing.assert_allclose(cond[0], p[:, :2])
    np.testing.assert_allclose(cond[1], np.c_[p[:, 2:], [1, 1], [0, 0]], rtol=1e-6)  # b1 alone: 1; b2 unseen: 0
    # log_loss: sigmoid, then one-vs-rest normalisation
    sig = 1 / (1 + np.exp(-np.array([-0.25, -1, 0.2])))
    np.testing.assert_allclose(toy_blocks("log_loss").blocks.proba(x)[0, 2:], sig / sig.sum(), rtol=1e-6)


def test_platt_link_by_hand():
    """Once ``platt`` is set, a node's P(child) is sigmoid(a d + b) of each child's decision (a
    binary block's first child: of -d), normalised over the node."""
    nodes = toy_blocks()
    nodes.platt = [[2.0, -1.0], [1.0, np.log(3)]]
    x = csr([{0: 0.25}], 3)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    # root: d(B) = 0.5 -> A: sigmoid(2 * -0.5 - 1) = sigmoid(-2), B: sigmoid(2 * 0.5 - 1) = 1/2
    root = np.array([sig(-2.0), 0.5])
    # A's block d = (-0.25, -1, 0.2): sigmoid(d + ln 3)
    kids = sig(np.array([-0.25, -1, 0.2]) + np.log(3))
    p = nodes.blocks.proba(x)[0]
    np.testing.assert_allclose(p, [*(root / root.sum()), *(kids / kids.sum())], rtol=1e-6)
    got, pair, local = nodes.blocks.pair_proba(x, np.array([0, 0]), np.array([1, 0]))
    assert pair.tolist() == [0, 0, 0, 1, 1] and local.tolist() == [0, 1, 2, 0, 1]  # no class clipped to 0
    np.testing.assert_allclose(got, [*p[2:], *p[:2]], rtol=1e-6)
    # saved with the arrays; arrays from before it load with the loss's own probabilities
    again = NodeClassifiers.from_arrays(H, nodes.to_arrays(), "modified_huber")
    np.testing.assert_allclose(again.blocks.proba(x), nodes.blocks.proba(x))
    old = {k: v for k, v in nodes.to_arrays().items() if k != "platt"}
    np.testing.assert_allclose(NodeClassifiers.from_arrays(H, old, "modified_huber").blocks.proba(x),
                               toy_blocks().blocks.proba(x))


def test_fit_platt_maximises_the_likelihood_at_the_true_parents():
    """The fitted (a, b) of a level is where the mean log-probability of each row's true child
    under its true parent's node is highest: no point of a grid around it does better."""
    nodes = toy_blocks()
    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, (60, 3))
    x = csr([{0: float(u), 1: float(v), 2: float(w)} for u, v, w in f], 3)
    # labels that follow the decisions, with noise: B where 2 f0 - f1 + noise > 0 (then b1, B's
    # one child: no term at level 2), else the A child of the highest decision + noise
    under_b = 2 * f[:, 0] - f[:, 1] + rng.normal(0, 1, 60) > 0
    a_kid = np.argmax(np.c_[f[:, 0] - 0.5, 3 * f[:, 2] - 1, np.full(60, 0.2)] + rng.normal(0, 1, (60, 3)), axis=1)
    codes = np.where(under_b[:, None], [1, 3], np.c_[np.zeros(60, int), a_kid])
    fitted = nodes.fit_platt(x, codes)
    assert (fitted[:, 0] > 0.1).all()  # informative decisions: far from the bound
    # too few rows (under MIN_INFORMATIVE = 30 a level): scikit-learn's probabilities stay (the
    # hostile review: a sigmoid fitted on 5 validation rows calibrated worse than none)
    assert toy_blocks().fit_platt(x.rows(np.arange(20)), codes[:20]) is None
    few = toy_blocks()  # 35 rows: level 1 fitted; level 2 (the rows under A, fewer than 30) takes its (a, b)
    got = few.fit_platt(x.rows(np.arange(35)), codes[:35])
    assert got is not None and np.array_equal(got[1], got[0]) and not np.array_equal(got[0], [1.0, 0.0])

    def mean_log_p(level, a, b):
        nodes.platt = np.where(np.arange(2)[:, None] == level, [a, b], fitted)
        p = nodes.conditional(x)[level]
        return np.mean(np.log(p[np.arange(60), codes[:, level]][codes[:, 0] == 0 if level else slice(None)]))
    for level in (0, 1):
        a, b = fitted[level]
        best = mean_log_p(level, a, b)
        for da in (-0.05, 0, 0.05):
            for db in (-0.05, 0, 0.05):
                assert mean_log_p(level, a * np.exp(da), b + db) <= best + 1e-6


def test_all_zero_block_is_uniform():
    blocks = LinearBlocks.from_fits([[(np.array([0]), np.array([1.0]), -1.0)] * 3], [3], 3, "modified_huber")
    np.testing.assert_allclose(blocks.proba(csr([{0: -2.0}], 3)), [[1 / 3] * 3])  # every d = -3: all 0
    # per pair: the row with every class at 0 gets all three, uniform; the other (d = 0, 0, 0): 1/3 each
    p, pair, local = blocks.pair_proba(csr([{0: -2.0}, {0: 1.0}], 3), np.array([0, 1]), np.array([0, 0]))
    assert pair.tolist() == [0, 0, 0, 1, 1, 1] and local.tolist() == [0, 1, 2] * 2
    np.testing.assert_allclose(p, [1 / 3] * 6)


def test_best_path_beats_greedy_by_hand():
    nodes = toy_blocks()
    # root d = -0.1: P(A) = .55, P(B) = .45. Greedy takes A; A's d = (-0.5, -1, 0.2) -> (.25, 0, .6) / .85,
    # so A > a3 is worth .55 * .6 / .85 = .388; B > b1 (b1 B's one child, P 1) is worth .45: the best path
    x = csr([{1: 0.1}], 3)
    codes, logp = nodes.greedy(x)
    assert codes.tolist() == [[0, 2]] and np.exp(logp[0]) == pytest.approx(.55 * .6 / .85, rel=1e-5)
    assert nodes.best_paths(x).tolist() == [[1, 3]]
    x = csr([{0: 0.05}], 3)  # root d = .1: B (.55) > b1 beats A > a3 (.45 * .6 / .875)
    assert nodes.best_paths(x).tolist() == nodes.greedy(x)[0].tolist() == [[1, 3]]


def random_nodes(rng, n_feat=30):
    """A variable-depth tree (paths of 1 to 4 levels) and a random classifier at every node."""
    h = Hierarchy.from_paths({tuple(f"c{rng.integers(0, 3)}" for _ in range(rng.integers(1, 5)))
                              for _ in range(25)})
    level, parent, children, widths, fits, singles = [], [], [], [], [], []
    for d in range(h.depth):
        ups = [-1] if d == 0 else range(h.sizes[d - 1])
        for up in ups:
            kids = np.arange(h.sizes[d]) if d == 0 else np.flatnonzero(h.parent_of(d) == up)
            if len(kids) == 1:
                singles.append((d, up, kids[0]))
                continue
            level.append(d)
            parent.append(up)
            children.extend(kids)
            widths.append(len(kids))
            n_dec = 1 if len(kids) == 2 else len(kids)
            fits.append([(rng.choice(n_feat, 5, replace=False), rng.normal(size=5), rng.normal() * .3)
                         for _ in range(n_dec)])
    blocks = LinearBlocks.from_fits(fits, widths, n_feat, "modified_huber")
    nodes = NodeClassifiers(h, blocks, level, parent, children, *np.array(singles, int).reshape(-1, 3).T)
    x = csr([{int(f): float(v) for f, v in zip(rng.choice(n_feat, 4, replace=False), rng.random(4))}
             for _ in range(200)], n_feat)
    return h, nodes, x


def test_best_paths_equal_exhaustive_search_on_random_trees():
    rng = np.random.default_rng(0)
    for trial in range(5):
        h, nodes, x = random_nodes(rng)
        exhaustive = h.decode_scores([], "path", conditional=nodes.conditional(x))
        assert np.array_equal(nodes.best_paths(x), exhaustive), trial
        assert np.array_equal(nodes.greedy(x)[0], h.decode_scores([], "top_down", conditional=nodes.conditional(x)))


def test_path_runs_by_hand():
    """Row 0 of test_linear_blocks_by_hand answered A > a3, row 1 B > b1: level 1 reads the root's
    block, (.25, .75) and (1, 0) (so B > b1 is worth 0, and kept at 0: it is the row's class); level
    2 A's block (.375, 0, .6) / .975 for row 0, a2 left out (0), and for row 1 B's only child b1, 1."""
    from ktt.confidence import PathChains

    nodes, x = toy_blocks(), csr([{0: 0.25}, {1: 1.0, 2: 0.5}], 3)
    codes = np.array([[0, 2], [1, 3]])
    runs = nodes.path_runs(x, codes)
    np.testing.assert_allclose(runs[0][0], [.25, .75, 1, 0], rtol=1e-6)
    assert runs[0][1].tolist() == [0, 2] and runs[0][2].tolist() == [0, 3] and runs[0][3].tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(runs[1][0], [.375 / .975, .6 / .975, 1], rtol=1e-6)
    assert runs[1][1].tolist() == [0, 2] and runs[1][2].tolist() == [1, 2] and runs[1][3].tolist() == [0, 2, 3]
    conf = PathChains.of_paths(runs).confidences([1, 1])
    np.testing.assert_allclose(conf, [[.25, .25 * .6 / .975], [0, 0]], rtol=1e-6)
    # T = 2 at level 2: A > a3 is .25 x sqrt(.6) / (sqrt(.375) + sqrt(.6))
    conf = PathChains.of_paths(runs).confidences([1, 2])
    np.testing.assert_allclose(conf[0, 1], .25 * np.sqrt(.6) / (np.sqrt(.375) + np.sqrt(.6)), rtol=1e-6)


def test_path_local_confidences_equal_every_class_on_random_trees():
    """What a chained model answers with, read along its paths alone, is what the sum over every
    path of the tree gave (``Hierarchy.answer_scores``, then ``temper``): the same paths, the same
    confidences, at T = 1 and at other temperatures, on trees whose paths end at any level."""
    from ktt.confidence import PathChains

    rng = np.random.default_rng(1)
    for trial in range(5):
        h, nodes, x = random_nodes(rng)
        codes = nodes.best_paths(x)
        chains = PathChains.of_paths(nodes.path_runs(x, codes))
        for ts in ([1.0] * h.depth, rng.uniform(.3, 3, h.depth)):
            dense_codes, proba = h.answer_scores(h.chain(nodes.conditional(x)), "leaf", "path", ts)
            assert np.array_equal(codes, dense_codes), trial
            np.testing.assert_allclose(chains.confidences(ts), h.confidences(codes, proba), rtol=1e-5, atol=1e-7)
        greedy = nodes.greedy(x)[0]  # decode=top_down: its paths' confidences, the same way
        np.testing.assert_allclose(PathChains.of_paths(nodes.path_runs(x, greedy)).confidences(ts),
                                   h.confidences(greedy, h.temper(h.node_proba(h.path_scores(
                                       h.chain(nodes.conditional(x)), "leaf")), ts)), rtol=1e-5, atol=1e-7)


def test_ngram_counts_and_tfidf_by_hand():
    index = NgramIndex.from_vocabulary({"red": 0, "appl": 1, "red appl": 2, "juic": 3}, "english")
    c = index.counts(["Red apples", "apple juice apple", "", "red red"])
    assert c.indptr.tolist() == [0, 3, 5, 5, 6]
    assert c.indices.tolist() == [0, 1, 2, 1, 3, 0] and c.data.tolist() == [1, 1, 1, 2, 1, 2]
    x = tfidf(c, np.array([1.0, 2.0, 3.0, 4.0]), "l2")
    row0 = np.array([1, 2, 3]) / np.sqrt(14)
    row1 = np.array([4, 4]) / np.sqrt(32)
    np.testing.assert_allclose(x.data, [*row0, *row1, 1.0], rtol=1e-6)
    again = NgramIndex.from_arrays(index.to_arrays(), "english").counts(["Red apples"])
    assert again.indices.tolist() == [0, 1, 2]


def test_ragged_range_and_rows():
    assert ragged_range([3, 0, 7], [5, 0, 9]).tolist() == [3, 4, 7, 8]
    x = csr([{0: 1.0}, {1: 2.0, 2: 3.0}, {}], 3)
    y = x.rows(np.array([1, 1, 0]))
    assert y.indptr.tolist() == [0, 2, 4, 5] and y.data.tolist() == [2, 3, 2, 3, 1]


def test_quantize_by_hand():
    arrays = toy_blocks().to_arrays()
    q = quantize(arrays)
    # decision 0's largest |w| is 2: scale 2/127; decision 1's is 1; decision 3 has none: scale 1
    np.testing.assert_allclose(q["w_scale"][:4], [2 / 127, 1 / 127, 3 / 127, 1.0], rtol=1e-6)
    assert q["w_int8"].tolist() == [127, 127, -64, 127]  # features 0 (dec 0, 1), 1 (dec 0), 2 (dec 2)
    back = LinearBlocks.from_arrays(q, "modified_huber")
    np.testing.assert_allclose(back.w, [2, 1, -64 * 2 / 127, 3], rtol=1e-6)


def test_sum_up_by_hand():
    leaf = np.array([[.1, .2, .3, .4, 0]])
    sums = H.sum_up(leaf)
    np.testing.assert_allclose(sums[0], [[.6, .4]])
    np.testing.assert_allclose(sums[1], leaf)
    np.testing.assert_allclose(H.sum_up(leaf, np.maximum)[0], [[.3, .4]])


@pytest.mark.parametrize("name", ["tfidf_hsgd", "tfidf_lsgd"])
def test_min_weight_zero_is_scikit_learns_classifier(name, bb300):
    """With nothing pruned, each node is exactly scikit-learn's SGDClassifier on the node's rows."""
    from sklearn.linear_model import SGDClassifier

    train, test = bb300["train"], bb300["test"]
    model = registry.create(name, train.hierarchy, min_weight=0.0).fit(train)
    x, xt = model.features(train.texts), model.features(test.texts)
    y = train.codes[:, 0 if name == "tfidf_hsgd" else -1]
    p = model.params
    clf = SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"], random_state=p["seed"], tol=1e-4)
    clf.fit(x, y)
    ours = model.nodes_.conditional(xt)[0 if name == "tfidf_hsgd" else -1][:, clf.classes_]
    np.testing.assert_allclose(ours, clf.predict_proba(xt), atol=1e-5)
    pruned = registry.create(name, train.hierarchy).fit(train)
    assert 0 < len(pruned.nodes_.blocks.w) < len(model.nodes_.blocks.w)


def test_hsgd_weights_grow_with_the_data_not_classes_x_vocabulary(bigbasket):
    model = registry.create("tfidf_hsgd", bigbasket.hierarchy).fit(bigbasket.train)
    dense = sum(model.nodes_.blocks.n_dec_of) * len(model.vectorizer_.vocabulary_)
    assert len(model.nodes_.blocks.w) < 0.03 * dense  # measured: 1.5% of the dense weights


def test_generated_taxonomy_and_catalog():
    from ktt.synth import generate_catalog, random_taxonomy, read_taxonomy

    tax = random_taxonomy(2000, 6, seed=1)
    assert len(tax) == len(set(tax)) == 2000 and max(map(len, tax)) == 6
    assert all(p[:-1] in set(tax) for p in tax if len(p) > 1)  # every category's parent is one
    depths = np.bincount([len(p) for p in tax])
    assert depths.argmax() in (3, 4) and depths[1] < 100  # most categories in the middle levels
    df = next(generate_catalog(5000, tax, seed=1, inner=0.2, noise=0.0))
    again = next(generate_catalog(5000, tax, seed=1, inner=0.2, noise=0.0))
    assert df.equals(again)
    labels = df.labels.str.split(" > ").map(tuple)
    inner = {q[:-1] for q in tax}
    assert 0.15 < labels.isin(inner).mean() < 0.25
    assert set(labels) <= set(tax)


def test_read_taxonomy_google_format(tmp_path):
    from ktt.errors import BadValue
    from ktt.synth import read_taxonomy

    f = tmp_path / "taxonomy.txt"
    f.write_text("# Google_Product_Taxonomy_Version: 2021-09-21\n1 - Animals & Pet Supplies\n"
                 "3237 - Animals & Pet Supplies > Live Animals\nArts > Crafts > Paint\n\n")
    assert read_taxonomy(f) == [("Animals & Pet Supplies",), ("Animals & Pet Supplies", "Live Animals"),
                                ("Arts",), ("Arts", "Crafts"), ("Arts", "Crafts", "Paint")]
    f.write_text("A > > B\n")
    with pytest.raises(BadValue, match="line 1: empty category name"):
        read_taxonomy(f)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("shutil").which("java"), reason="Spark needs Java: `make test` installs openjdk-17-jre-headless")
def test_per_node_fits_on_spark_give_the_same_model(bigbasket_small):
    """tfidf_hsgd's node fits as Spark tasks (joblib's Spark backend, local[2]): the same weights."""
    import os
    import sys

    from joblib import parallel_config
    from joblibspark import register_spark
    from pyspark.sql import SparkSession

    from ktt.data import load_dataset

    ds = load_dataset("bb_small", bigbasket_small)
    here = registry.create("tfidf_hsgd", ds.hierarchy).fit(ds.train)
    os.environ["PYSPARK_PYTHON"] = sys.executable  # Spark's Python workers: this environment
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        register_spark()
        with parallel_config(backend="spark", n_jobs=2):
            from joblib.parallel import get_active_backend
            assert type(get_active_backend()[0]).__name__ == "SparkDistributedBackend"
            there = registry.create("tfidf_hsgd", ds.hierarchy).fit(ds.train)
    finally:
        spark.stop()
    for k, v in here.nodes_.to_arrays().items():
        assert np.array_equal(v, there.nodes_.to_arrays()[k]), k
    assert np.array_equal(here.predict(ds.test.texts), there.predict(ds.test.texts))


@pytest.fixture(scope="module")
def deep_catalog(tmp_path_factory):
    """`ktt generate` of a deep catalog: 2,000 categories, paths of 1 to 6 levels, 3,000 titles."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("deep")
    ktt = Path(sys.executable).parent / "ktt"
    out = subprocess.run([str(ktt), "generate", "-n", "deep", "--rows", "3000", "--categories", "2000",
                          "--max-depth", "6", "--no-track", "--out", str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "paths of 1/2/3/4/5/6 levels" in out.stdout
    return root


DEEP_TINY = {"epochs": 1, "batch_size": 32, "classifier_lr": 3e-3, "h_hidden_dim": 64, "global_hidden": 64,
             "local_hidden": 64}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tfidf_hsgd", "tfidf_lsgd", "db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf",
                                  "db_achmcnn"])
def test_every_model_trains_exports_and_serves_a_deep_catalog(name, deep_catalog, tiny_encoder, tracking, tmp_path):
    from conftest import Served

    from ktt.data import load_dataset
    from ktt.export import export
    from ktt.tracking import resolve_source
    from ktt.train import train

    ds = load_dataset("deep", deep_catalog)
    assert ds.hierarchy.depth == 6 and ds.hierarchy.variable_depth and sum(ds.hierarchy.class_counts) > 1000
    cls = registry.get(name)
    overrides = {k: v for k, v in DEEP_TINY.items() if k in cls.defaults}
    if "encoder" in cls.defaults:
        overrides["encoder"] = tiny_encoder
    fit = train(name, "deep", overrides=overrides, datasets_root=deep_catalog, weights_root=tmp_path / "w")
    assert 0 < fit.metrics["test_h_f1"] <= 1
    built = export(fit.run_id, bento=True, build_root=tmp_path / "b", datasets_root=deep_catalog)
    model = cls.load(resolve_source(fit.run_id).checkpoint)
    texts = ds.test.texts[:30]
    expected = ["\n".join(p) for p in model.predict_paths(texts)]
    if not (Path(__file__).resolve().parents[1] / ".venv-serving" / "bin" / "bentoml").exists():
        pytest.skip("no serving env: run `make env`")
    svc = Served(built["inference"])
    try:
        assert svc.post("predict", [{"text": t} for t in texts]).json() == expected
    finally:
        svc.stop()


def test_a_fit_that_cannot_fit_says_so_before_training(bb300, monkeypatch):
    from ktt import tfidf
    from ktt.errors import BadValue

    train = bb300["train"]
    model = registry.create("tfidf_lsgd", train.hierarchy)
    x = model.fit_features(train.texts)
    n_leaves = len(np.unique(train.codes[:, -1]))
    need = 8 * n_leaves * min(x.shape[1], x.nnz)  # one flat classifier: leaves x features, float64
    monkeypatch.setattr(tfidf, "available_memory", lambda: int(need / 0.8) - 1)
    called, real = [], tfidf.run_parallel
    monkeypatch.setattr(tfidf, "run_parallel", lambda *a: called.append(1) or real(*a))
    with pytest.raises(BadValue, match=rf"tfidf_lsgd would need about {need / 2**30:.1f} GB .* "
                                       rf"\({n_leaves:,} classes x {x.shape[1]:,} features.* Use tfidf_hsgd"):
        model.fit(train)
    assert not called  # refused before any classifier trained
    monkeypatch.setattr(tfidf, "available_memory", lambda: int(need / 0.8) + 1)
    model.fit(train)
    assert called


@pytest.mark.parametrize("name", ["tfidf_hsgd", "tfidf_lsgd"])
def test_checkpoints_of_scikit_learn_classifiers_still_convert(name, bb300, tmp_path):
    """A checkpoint written before the sparse classifiers held scikit-learn's own (``tfidf_hsgd``:
    per level, each parent's SGDClassifier or only child; ``tfidf_lsgd``: one ``clf_``), pickled:
    converted (``scripts/convert_checkpoint.py``), it scores as they did."""
    from conftest import legacy_tfidf_pickle
    from ktt.tfidf import convert_pickled

    train, texts = bb300["train"], bb300["test"].texts
    model = registry.create(name, train.hierarchy)
    x, codes, h = model.fit_features(train.texts), train.codes, train.hierarchy
    if name == "tfidf_lsgd":
        old = {"clf_": model.make_sgd().fit(x, codes[:, -1])}
        leaf = np.zeros((len(texts), h.n_leaves))
        leaf[:, old["clf_"].classes_] = old["clf_"].predict_proba(model.features(texts))
        expected = leaf
    else:
        nodes = []
        for d in range(h.depth):
            parents = codes[:, d - 1] if d else np.full(len(codes), -1)
            level = {}
            for up in np.unique(parents):
                y = codes[parents == up, d]
                level[int(up)] = int(y[0]) if len(np.unique(y)) == 1 else model.make_sgd().fit(x[parents == up], y)
            nodes.append(level)
        old = {"nodes_": nodes}
        expected = None
    legacy_tfidf_pickle(model, tmp_path / "old.pt", {"preprocessor_": model.preprocessor_,
                                                     "vectorizer_": model.vectorizer_, **old})
    convert_pickled(tmp_path / "old.pt", tmp_path / "converted.pt")
    loaded = registry.get(name).load(tmp_path / "converted.pt")
    if expected is None:  # the root's classifier, as scikit-learn scores it
        root = nodes[0][-1]
        expected = np.zeros((len(texts), h.sizes[0]))
        expected[:, root.classes_] = root.predict_proba(model.features(texts))
        np.testing.assert_allclose(loaded.predict_proba(texts)[0], expected, atol=1e-5)
    else:
        np.testing.assert_allclose(loaded.leaf_scores(loaded.features(texts)), expected, atol=1e-5)
    loaded.save(tmp_path / "new.pt")
    assert np.array_equal(registry.get(name).load(tmp_path / "new.pt").predict(texts), loaded.predict(texts))


def test_chain_by_hand():
    cond = [np.array([[.4, .6]]), np.array([[.5, .25, .25, .9, .1]])]  # A, B; a1 a2 a3 under A, b1 b2 under B
    chained = H.chain(cond)
    np.testing.assert_allclose(chained[1], [[.2, .1, .1, .54, .06]])
    np.testing.assert_allclose(chained[0], cond[0])


def test_search_reads_the_same_runs_as_scoring_the_paths():
    """``NodeClassifiers.search`` takes each path's runs from the nodes it scored while searching:
    the same values as scoring the path's nodes again (``path_runs``), for both decoders."""
    rng = np.random.default_rng(2)
    for trial in range(5):
        h, nodes, x = random_nodes(rng)
        for decode, paths in (("path", nodes.best_paths(x)), ("top_down", nodes.greedy(x)[0])):
            codes, runs = nodes.search(x, decode)
            assert np.array_equal(codes, paths)
            for got, want in zip(runs, nodes.path_runs(x, codes)):
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def catalogs():
    """``tfidf_hsgd`` calibrated on generated catalogs of 50 and of 5,600 categories (paths of 1 to
    3 and 1 to 7 levels, 20,000 titles each), and 2,000 test titles of each."""
    import pandas as pd

    from ktt import synth
    from ktt.data import Split, prepare

    out = {}
    for categories, depth in ((50, 3), (5600, 7)):
        df = pd.concat(synth.generate_catalog(20_000, synth.random_taxonomy(categories, depth)), ignore_index=True)
        splits, h, _ = prepare(df)
        split = {k: Split(v["text"].tolist(), [tuple(p) for p in v["labels"]], h) for k, v in splits.items()}
        model = registry.create("tfidf_hsgd", h).fit(split["train"])
        model.calibrate(split["val"])
        out[categories] = model, split["test"].texts[:2000]
    return out


def test_answers_and_confidences_are_those_of_every_path(catalogs):
    """A real catalog model answers, path-locally, what scoring every path of the tree gives
    (``Model.calibrated`` of all classes, tempered: ``predict_proba``, monitoring): the same paths
    and the same confidences at the fitted temperatures (some near 20 on the deep levels) and
    level maps, for both decoders."""
    from ktt.confidence import recalibrate

    for categories, (model, texts) in catalogs.items():
        h = model.hierarchy
        for decode in ("path", "top_down"):
            model.params["decode"] = decode
            codes, conf = model.predict_confident(texts)
            every, proba = model.calibrated(model.raw_scores(texts))
            assert np.array_equal(codes, every), (categories, decode)
            np.testing.assert_allclose(conf, recalibrate(h, every, h.confidences(every, proba), model.level_maps), rtol=1e-4, atol=1e-6)
            for t in range(3):  # one title a call: the same answer as in a batch
                one = model.predict_confident(texts[t:t + 1])
                assert np.array_equal(one[0], codes[t:t + 1]) and np.allclose(one[1], conf[t:t + 1], rtol=1e-4, atol=1e-6)
        model.params["decode"] = "path"


def test_exact_ties_and_paths_of_probability_zero_by_hand():
    """Found by the hostile review of issue 39. Three whole paths of probability 1/3 each: the
    search answers the lowest leaf, as the argmax over every path does (it compares the float32
    products ``Hierarchy.chain`` computes, not sums of logs whose last bit differs). A sibling of
    probability 0 stays 0 at any temperature in both computations: at T = 20 scoring every path
    read it as 1e-30 and gave it (1e-30)^(1/20) = .03."""
    from ktt.confidence import PathChains

    h = Hierarchy.from_paths([("A", "a1"), ("B", "b1"), ("B", "b2"), ("C", "c1")])
    # root: one-vs-rest over A, B, C, biases 0, 1, -1: (.5, 1, 0) / 1.5; B over (b1, b2): one decision
    # at 0, (.5, .5); A and C have one child each. A > a1, B > b1 and B > b2 are worth 1/3 each, C > c1 0.
    fits = [[(np.array([], int), np.array([]), b) for b in (0.0, 1.0, -1.0)], [(np.array([], int), np.array([]), 0.0)]]
    blocks = LinearBlocks.from_fits(fits, [3, 2], 1, "modified_huber")
    nodes = NodeClassifiers(h, blocks, [0, 1], [-1, 1], [0, 1, 2, 1, 2], [1, 1], [0, 2], [0, 3])
    x = Csr(np.array([0, 0]), np.zeros(0, np.int32), np.zeros(0, np.float32), (1, 1))  # no features: the biases
    dense = h.chain(nodes.conditional(x))
    assert dense[1][0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    codes, runs = nodes.search(x)
    assert codes.tolist() == h.decode_scores(dense, "leaf").tolist() == [[0, 0]]  # A > a1, the lowest leaf
    ts = [20.0, 1.0]
    every = h.confidences(codes, h.answer_scores(dense, "leaf", "path", ts)[1])
    a, b = (1 / 3) ** (1 / 20), (2 / 3) ** (1 / 20)  # C's 0 adds nothing
    np.testing.assert_allclose(PathChains.of_paths(runs).confidences(ts), [[a / (a + b)] * 2], rtol=1e-6)
    np.testing.assert_allclose(every, [[a / (a + b)] * 2], rtol=1e-6)


def test_answering_reads_the_paths_nodes_not_every_class(catalogs, monkeypatch):
    """The guard of issue 39, deterministic: answering with confidences computes, per row, the
    probabilities of the classes of the nodes it visits (``LinearBlocks`` counts them), at most
    twice what the answered path's nodes hold, at 50 and at 5,600 categories alike. Scoring every
    node (the code before issue 39) failed it at both: 65 a row against the path's 16, and 5,012
    against 264."""
    from ktt.sparse import LinearBlocks

    computed = [0]
    pair_proba, proba = LinearBlocks.pair_proba, LinearBlocks.proba

    def count_pairs(self, x, rows, blocks):
        computed[0] += int(self.width[np.asarray(blocks)].sum())
        return pair_proba(self, x, rows, blocks)

    def count_all(self, x):
        computed[0] += x.shape[0] * self.n_out
        return proba(self, x)

    monkeypatch.setattr(LinearBlocks, "pair_proba", count_pairs)
    monkeypatch.setattr(LinearBlocks, "proba", count_all)
    for categories, (model, texts) in catalogs.items():
        h, computed[0] = model.hierarchy, 0
        codes, _ = model.predict_confident(texts)
        per_row = computed[0] / len(texts)
        start, end = zip(*(h.sibling_runs(d) for d in range(h.depth)))
        on_path = sum((end[d] - start[d])[codes[:, d]].sum() for d in range(h.depth)) / len(texts)
        assert per_row <= 2 * on_path, (categories, per_row, on_path)
        print(f"{categories} categories: {per_row:.0f} probabilities a row, the path's nodes hold {on_path:.0f}")
