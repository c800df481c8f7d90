"""A catalog as it comes: a header-less CSV whose label cell is a JSON list, with paths of one to
four levels, ingested with one command (capped at three), then every model trained on it, its
answers checked in-process, through ONNX and through the pyfunc and the BentoService, with and
without a stopping threshold."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import Served, leaks, needs_serving
from ktt import registry
from ktt.data import load_dataset
from ktt.metrics import evaluate

MODELS = ["tfidf_lsgd", "tfidf_hsgd", "db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]
TINY = {"epochs": 2, "batch_size": 32, "encoder_lr": 1e-3, "classifier_lr": 3e-3, "h_hidden_dim": 64,
        "global_hidden": 64, "local_hidden": 64}


@pytest.fixture(scope="module")
def catalog(bigbasket_df, tmp_path_factory):
    """BigBasket rows of three categories reshaped like a raw catalog export: Baby Care ends at
    level 1; Beverages > Tea ends at level 2; Beverages > Coffee ends there for Ground Coffee only
    (others go on); Snacks' Namkeen rows go one level deeper (cut by --depth 3). Labels are a JSON
    list with one ' >> '-separated string, or a list of the levels."""
    df = bigbasket_df[bigbasket_df.labels.map(lambda p: p[0]).isin(["Baby Care", "Beverages", "Snacks & Branded Foods"])]
    df = df.groupby(df.labels.map(lambda p: p[0])).head(500).reset_index(drop=True)
    rng = np.random.default_rng(0)
    cells = []
    for p in df.labels.map(list):
        if p[0] == "Baby Care":
            p = p[:1]
        elif p[1] == "Tea" or p[1:] == ["Coffee", "Ground Coffee"]:
            p = p[:2]
        elif p[-1] == "Namkeen & Snacks":
            p = p + ["Assorted"]
        cells.append(json.dumps(p) if rng.random() < 0.3 else json.dumps([" >> ".join(p)]))
    folder = tmp_path_factory.mktemp("catalog")
    pd.DataFrame({"title": df.text, "category": cells}).to_csv(folder / "export.csv", header=False, index=False)
    return folder / "export.csv"


@pytest.fixture(scope="module")
def shop(catalog, tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    out = subprocess.run([sys.executable, "-m", "ktt", "ingest", str(catalog), "--name", "shop", "--columns", "title,category",
                          "--text-col", "title", "-c", "category", "--label-sep", ">>", "--depth", "3", "--out", str(root),
                          "--no-track"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "classes per level" in out.stdout and "paths of 1/2/3 levels" in out.stdout
    return root


def test_ingested_with_ends_recorded(shop):
    ds = load_dataset("shop", shop)
    h = ds.hierarchy
    assert h.depth == 3 and h.variable_depth
    paths = set(ds.train.paths) | set(ds.val.paths) | set(ds.test.paths)
    assert ("Baby Care",) in {p[:1] for p in paths if len(p) == 1}
    assert max(map(len, paths)) == 3 and not any("" in p or "[" in "".join(p) for p in paths)
    assert any(p[1:] == ("Coffee", "Ground Coffee") for p in paths) is False  # ends at Coffee instead
    ends = {h.names(d)[i] for d in range(2) for i in h.may_end(d)}
    assert ends == {"Baby Care", "Beverages > Tea", "Beverages > Coffee"}
    saved = json.loads((shop / "shop" / "hierarchy.json").read_text())
    assert saved["may_end"] == [h.may_end(d).tolist() for d in range(3)]
    manifest = json.loads((shop / "shop" / "manifest.json").read_text())
    assert set(manifest["report"]["rows_per_path_length"]) == {"1", "2", "3"}


def _fit(name, ds, tiny_encoder, **extra):
    cls = registry.get(name)
    params = {k: v for k, v in TINY.items() if k in cls.defaults}
    if "encoder" in cls.defaults:
        params["encoder"] = tiny_encoder
    return cls(ds.hierarchy, **params, **extra).fit(ds.train, ds.val)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_learns_where_paths_end(name, shop, tiny_encoder, tmp_path):
    """Answers are paths of the catalog, of their own length, never an end class; the ONNX graphs
    answer the same; the threshold cuts answers in both."""
    from ktt.export import export_onnx
    from ktt.serving.runtime import Predictor

    ds = load_dataset("shop", shop)
    model = _fit(name, ds, tiny_encoder)
    known = {p[:k] for p in (*ds.train.paths, *ds.test.paths) for k in range(1, len(p) + 1)}
    ends = set(ds.train.paths) | set(ds.test.paths)
    paths = model.predict_paths(ds.test.texts)
    assert all(tuple(p) in ends for p in paths), "every answer is a path the catalog has, ending where one ends"
    m = evaluate(ds.hierarchy, ds.test.codes, model.predict(ds.test.texts))
    assert all(np.isfinite(v) for v in m.values())
    if name.startswith("tfidf"):  # a real learner (the tiny encoder is random): short paths right
        short = [i for i, p in enumerate(ds.test.paths) if len(p) < 3]
        assert np.mean([tuple(paths[i]) == ds.test.paths[i] for i in short]) > 0.8
    # a threshold above the least confident answer's deepest level cuts at least that answer; it
    # stays clear of every confidence, so the ONNX graphs' float32 rounding cannot move an answer
    last = np.unique([a[-1][1] for a in model.answers(ds.test.texts)])
    gaps = np.flatnonzero(np.diff(last) > 1e-4)
    t = float((last[gaps[0]] + last[gaps[0] + 1]) / 2) if len(gaps) else min(1.0, float(last[-1]) + 1e-4)
    cut = model.answers(ds.test.texts, threshold=t)
    assert all(tuple(n for n, _ in a) in known | {()} and all(c >= t for _, c in a[-1:]) for a in cut)
    assert sum(map(len, cut)) < sum(map(len, paths))

    export_onnx(model, tmp_path)
    served = Predictor.from_dir(tmp_path).predict(ds.test.texts).paths
    assert served == paths
    assert Predictor.from_dir(tmp_path).predict(ds.test.texts, t).paths == [[n for n, _ in a] for a in cut]


def test_threshold_hyperparameter_and_per_call(shop, tiny_encoder):
    ds = load_dataset("shop", shop)
    model = _fit("tfidf_hsgd", ds, tiny_encoder, threshold=0.7)
    texts = ds.test.texts
    assert model.predict_paths(texts) == model.predict_paths(texts, threshold=0.7) != model.predict_paths(texts, 0)
    for a in model.answers(texts):  # the chained scores only fall with depth: every answered level clears it
        assert all(c >= 0.7 for _, c in a)
    with pytest.raises(ValueError, match="threshold must be a number from 0 to 1, not 2"):
        model.predict_paths(texts, 2)
    with pytest.raises(ValueError, match=r"hyperparameter 'threshold' of model 'tfidf_hsgd': 1.5 is not in \[0, 1\]"):
        registry.create("tfidf_hsgd", ds.hierarchy, threshold=1.5)


@pytest.mark.slow
@needs_serving
def test_threshold_in_the_pyfunc_and_the_service(shop, tracking, tmp_path):
    import mlflow

    from ktt.export import export
    from ktt.pyfunc import answers
    from ktt.train import train

    ds = load_dataset("shop", shop)
    fit = train("tfidf_hsgd", "shop", datasets_root=shop, weights_root=tmp_path / "w", overrides={"threshold": 0.3})
    model = registry.get("tfidf_hsgd").load(fit.checkpoints["best"])
    texts = ds.test.texts[:60]
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{fit.run_id}/model")
    frame = pd.DataFrame({"text": texts})
    default, strict = pyfunc.predict(frame), pyfunc.predict(frame, params={"threshold": 0.8})
    pd.testing.assert_frame_equal(default, answers(model, texts))  # the model's own 0.3
    pd.testing.assert_frame_equal(strict, answers(model, texts, 0.8))
    assert strict.L3.isna().sum() > default.L3.isna().sum()
    row = strict[strict.L1.notna() & strict.L2.isna()].iloc[0]  # below where the answer stops: empty, never a made-up class
    assert np.isnan(row.L2_confidence) and row.path == row.L1
    curve = mlflow.artifacts.load_dict(mlflow.get_run(fit.run_id).info.artifact_uri + "/metrics/test_stop_curve.json")
    assert curve["columns"][:3] == ["threshold", "coverage", "h_precision"]

    export(fit.run_id, bento=True, weights_root=tmp_path / "w", build_root=tmp_path / "build")
    svc = Served(tmp_path / "build" / "tfidf_hsgd_shop" / "inference")
    try:
        got = svc.post("predict", [{"text": t} for t in texts]).json()
        assert got == ["\n".join(p) for p in model.predict_paths(texts)]
        got = svc.post("predict", [{"text": t, "threshold": 0.8} for t in texts]).json()
        assert got == ["\n".join(p) for p in model.predict_paths(texts, 0.8)]
        js = svc.post("predict_json", {"text": texts, "threshold": 0.8}).json()
        want = model.answers(texts, 0.8)
        assert [[(lv["class"], round(lv["score"], 5)) for lv in a["levels"]] for a in js] == \
            [[(n, round(c, 5)) for n, c in a] for a in want]
        for bad in ("high", 1.5, None, True):
            r = svc.post("predict", {"text": texts[0], "threshold": bad})
            assert r.status_code == 400 and "threshold must be a number from 0 to 1" in r.text and not leaks(400, r.text)
        # one client's bad threshold in a list fails that request only; the service answers the next
        assert svc.post("predict", {"text": texts[1]}).json() == "\n".join(model.predict_paths(texts[1:2])[0])
    finally:
        svc.stop()
