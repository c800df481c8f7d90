"""Every registered model honours the contract (``ktt.model.Model``), checked the way
scikit-learn's ``check_estimator`` checks any estimator: fit on a tiny real set, predict,
probabilities, calibration, save/load round trip, export, the server's answers and the
reference set. A plug-in registered with ``ktt.registry.register`` is checked the same way."""
import numpy as np
import pytest

from ktt import registry
from ktt.export import export_onnx
from ktt.hierarchy import Hierarchy
from ktt.schema import level_column_names
from ktt.serving.runtime import Predictor

#: small settings for any hyperparameter a model has (the tiny random encoder stands in for MiniLM)
TINY = {"epochs": 1, "batch_size": 32, "encoder_lr": 1e-3, "classifier_lr": 3e-3, "h_hidden_dim": 64,
        "global_hidden": 64, "local_hidden": 64, "target_precision": 0.9}


def check_model(name: str, splits: dict, tmp_path, **extra) -> None:
    """The contract of model ``name``, on ``splits`` (``train``, ``val``, ``test``)."""
    cls = registry.get(name)
    train, val, test = splits["train"], splits["val"], splits["test"]
    h: Hierarchy = train.hierarchy
    params = {k: v for k, v in {**TINY, **extra}.items() if k in cls.defaults}
    model = cls(h, **params)
    assert model.name == name and model.params == cls.check_params(params)
    assert model.paths in ("leaf", "joint", "logits")  # log_odds: read from exports made before logits

    assert model.fit(train, val) is model
    raw = model.raw_scores(test.texts)
    assert [r.shape for r in raw] == [(len(test), n) for n in h.sizes]
    codes, proba = model.predict_scored(test.texts)
    assert codes.shape == (len(test), h.depth) and np.array_equal(codes, model.predict(test.texts))
    assert h.is_consistent(codes).all()  # every default decodes to paths of the tree
    for d in range(h.depth):  # probabilities: one distribution per level, a class never above its parent
        assert np.allclose(proba[d].sum(axis=1), 1) and (proba[d] >= 0).all()
        if d:
            assert (proba[d] <= proba[d - 1][:, h.parent_of(d)] + 1e-9).all()

    cal = model.calibrate(val)
    assert len(cal["temperatures"]) == h.depth and cal["curve"]["threshold"] and cal["threshold"] is not None
    codes = model.predict(test.texts)  # calibrating may fit the node probabilities paths are decoded by (tfidf_hsgd)
    answers = model.answers(test.texts)
    assert all(c1 >= c2 - 1e-9 for a in answers for (_, c1), (_, c2) in zip(a, a[1:]))
    assert model.predict_paths(test.texts) == [[n for n, _ in a] for a in answers]

    path = tmp_path / f"{name}.pt"
    model.save(path)
    back = cls.load(path)
    assert back.params == model.params and back.hierarchy == h and back.calibration_ == cal
    assert np.array_equal(back.predict(test.texts), codes) and back.answers(test.texts) == answers

    files = export_onnx(back, tmp_path / "export")
    assert set(files) == ({"arrays", "config"} if cls.served_from == "arrays" else {"encoder", "classifier", "config"})
    config = back.serving_config()
    assert config["model"] == name and config["temperatures"] == cal["temperatures"]
    pred = Predictor.from_dir(tmp_path / "export")
    served = pred.predict(test.texts)
    assert served.paths == [[n for n, _ in a] for a in answers] and np.array_equal(served.codes, codes)
    assert np.allclose(served.conf, back.predict_confident(test.texts)[1], atol=1e-4)
    assert np.allclose(pred.leaf_scores(served.features), back.predict_proba(test.texts)[-1], atol=1e-4)

    ref = back.gen_reference_set(test)
    assert list(ref.columns) == ["targets", *map(str, range(24)), *h.leaf_names, *level_column_names(h.depth)]
    assert len(ref) == len(test) and np.isfinite(ref.drop(columns="targets").to_numpy(float)).all()


@pytest.mark.parametrize("name", registry.available())
def test_every_registered_model_honours_the_contract(name, bb300, tiny_encoder, tmp_path):
    check_model(name, bb300, tmp_path, encoder=tiny_encoder)
