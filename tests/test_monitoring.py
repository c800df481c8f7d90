"""The drift sidecar on a real reference set: BigBasket rows show no drift, CLINC150 rows move the gauges."""
import json
import threading
from pathlib import Path
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
import yaml

from ktt import registry
from ktt.monitoring.sidecar import Monitor, load_config, make_handler
from ktt.serving.runtime import pool_features

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(bigbasket, clinc_df, tmp_path_factory):
    """tfidf_lsgd on BigBasket, its reference set, and rows built from BigBasket and CLINC150 texts."""
    tmp = tmp_path_factory.mktemp("mon")
    model = registry.get("tfidf_lsgd")(bigbasket.hierarchy).fit(bigbasket.train)
    model.gen_reference_set(bigbasket.test).to_parquet(tmp / "references.parquet")
    (tmp / "evidently.yaml").write_text((ROOT / "models/tfidf_lsgd/bentoml/evidently.yaml").read_text())

    def rows(texts):
        feats = model.vectorizer_.transform(model.preprocessor_(texts)).toarray()
        return np.concatenate([pool_features(feats), model.predict_proba(texts)[-1]], axis=1)
    return tmp, rows(bigbasket.val.texts[:200]), rows(clinc_df.text.sample(200, random_state=0).tolist())


def test_no_drift_on_same_distribution_and_drift_on_another(setup):
    tmp, bb_rows, clinc_rows = setup
    mon = Monitor(load_config(tmp / "evidently.yaml"))
    assert mon.calculate() is False  # fewer rows than min_reference_size
    mon.add({"data": bb_rows[:100].tolist()})
    assert mon.calculate() is True
    assert mon.dataset_drift._value.get() == 0.0
    calm_share = mon.drift_share._value.get()
    assert calm_share < 0.1
    mon.add({"data": clinc_rows[:100].tolist()})  # the window now holds CLINC150 utterances only
    mon.calculate()
    assert mon.drift_share._value.get() > calm_share
    assert mon.column_drift.labels("confidence")._value.get() < 1e-6  # the model is far less sure of these


def test_http_interface(setup):
    tmp, bb_rows, _ = setup
    mon = Monitor(load_config(tmp / "evidently.yaml"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(mon))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(body):
        req = urllib.request.Request(url + "/iterate", body if isinstance(body, bytes) else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    try:
        assert post({"data": bb_rows[:5].tolist()}) == (200, {"rows": 5})
        for bad, msg in [(b"{not json", "Expecting"), ({"rows": []}, "expected"), ({"data": [[1, 2]]}, "numbers"),
                         ({"data": [["a"] * bb_rows.shape[1]]}, "numbers only")]:
            code, body = post(bad)
            assert code == 400 and msg in body["error"]
        assert len(mon.window) == 5  # bad posts added nothing, good rows were all kept
        text = urllib.request.urlopen(url + "/metrics").read().decode()
        assert "ktt_monitoring_rows_total 5.0" in text and "ktt_monitoring_rejected_requests_total 4.0" in text
    finally:
        server.shutdown()


def test_bad_config(tmp_path):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"service": {"reference_path": "r.parquet"}}))
    with pytest.raises(ValueError, match="missing"):
        load_config(tmp_path / "e.yaml")
