"""tfidf_hsgd against HiClass's per-parent-node classifier, on the same TF-IDF features.

    .venv/bin/python benchmarks/hiclass_compare.py

Deduplicated BigBasket, official split. HiClass 5.0.8 is installed by this script into a
throwaway virtual environment (it is no dependency of KTT), with the scikit-learn version of
KTT's own environment, and fits ``LocalClassifierPerParentNode`` around the same
``SGDClassifier`` settings on the very matrix ``tfidf_hsgd`` trained on. Both are scored by
``ktt.metrics.evaluate``; fit seconds exclude featurisation.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import bigbasket  # noqa: E402
from benchmarks.report import write_section  # noqa: E402

HICLASS = "hiclass==5.0.8"

WORKER = r'''
import json, sys, time
import numpy as np, scipy.sparse as sp
from hiclass import LocalClassifierPerParentNode
from sklearn.linear_model import SGDClassifier
d = sys.argv[1]
x_train, x_test = sp.load_npz(f"{d}/train.npz"), sp.load_npz(f"{d}/test.npz")
y = np.load(f"{d}/y.npy", allow_pickle=True)
p = json.load(open(f"{d}/params.json"))
clf = LocalClassifierPerParentNode(local_classifier=SGDClassifier(
    loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"], random_state=p["seed"], n_jobs=-1, tol=1e-4))
t0 = time.perf_counter(); clf.fit(x_train, y); fit_s = time.perf_counter() - t0
pred = clf.predict(x_test)
np.save(f"{d}/pred.npy", np.asarray(pred, dtype=object), allow_pickle=True)
json.dump({"fit_s": fit_s}, open(f"{d}/time.json", "w"))
'''


def main() -> None:
    import scipy.sparse as sp
    import sklearn

    from ktt import registry
    from ktt.hierarchy import SEP
    from ktt.metrics import evaluate

    tmp = Path(tempfile.mkdtemp(prefix="ktt-hiclass-"))
    ds = bigbasket.load()
    h = ds.hierarchy

    rows = []

    def add(name, decoding, codes, fit_s):
        m = evaluate(h, ds.test.codes, codes)
        rows.append(f"| {name} | {decoding} | {m['L1_accuracy']:.3f} | {m['L2_accuracy']:.3f} | "
                    f"{m['leaf_accuracy']:.3f} | {m['h_f1']:.3f} | {m['violation_rate']:.3f} | {fit_s:.1f} |")
        print(rows[-1], flush=True)

    for name in ("tfidf_lsgd", "tfidf_hsgd"):
        model = registry.create(name, h)
        x = model.fit_features(ds.train.texts)  # featurisation outside the timed fit, as for HiClass
        model.fit_features = lambda texts, x=x: x
        t0 = time.perf_counter()
        model.fit(ds.train, ds.val)
        fit_s = time.perf_counter() - t0
        if name == "tfidf_lsgd":
            add(name, "leaf (= whole path)", model.predict(ds.test.texts), fit_s)
            continue
        cond = model.conditional_proba(model.features(ds.test.texts))
        add(name, "whole path (default)", h.decode_scores([], "path", conditional=cond), fit_s)
        add(name, "greedy top-down", h.decode_scores([], "top_down", conditional=cond), fit_s)
        hsgd, x_train = model, x

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", HICLASS,
                    f"scikit-learn=={sklearn.__version__}"], check=True)
    sp.save_npz(tmp / "train.npz", x_train.tocsr())
    sp.save_npz(tmp / "test.npz", hsgd.features(ds.test.texts).tocsr())
    # full-path names per level: a leaf name shared by two parents stays two classes
    y = np.array([[SEP.join(p[:d + 1]) for d in range(h.depth)] for p in ds.train.paths], dtype=object)
    np.save(tmp / "y.npy", y, allow_pickle=True)
    (tmp / "params.json").write_text(json.dumps(hsgd.params))
    (tmp / "worker.py").write_text(WORKER)
    subprocess.run([str(venv / "bin" / "python"), str(tmp / "worker.py"), str(tmp)], check=True)
    pred = np.load(tmp / "pred.npy", allow_pickle=True)
    codes = h.encode([tuple(str(row[-1]).split(SEP)) for row in pred])
    add("HiClass LocalClassifierPerParentNode", "its own (greedy top-down)", codes,
        json.loads((tmp / "time.json").read_text())["fit_s"])

    write_section("hiclass", "\n".join([
        "## tfidf_hsgd vs HiClass on the same features (issue 10)", "",
        "Command: `.venv/bin/python benchmarks/hiclass_compare.py`", "",
        f"Deduplicated BigBasket, official split ({len(ds.train)} training / {len(ds.test)} test rows), the "
        f"TF-IDF matrix of `tfidf_hsgd` (hyperparameters from `hyperparameters.json`) for all rows; HiClass "
        f"({HICLASS}, installed by the command into a throwaway environment) wraps the same `SGDClassifier` "
        f"settings. Fit seconds exclude featurisation.", "",
        "| model | decoding | L1 acc | L2 acc | leaf acc | hier. F1 | violation rate | fit s |",
        "|---|---|---|---|---|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
