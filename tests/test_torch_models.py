"""The five encoder models: train, checkpoint, reload and resume, on real BigBasket rows."""
import numpy as np
import pytest
import torch

from ktt import registry
from ktt.model import NullLogger
from ktt.tracking import RunLogger

TORCH_MODELS = ["db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]
FAST = {"epochs": 3, "batch_size": 16, "encoder_lr": 1e-3, "classifier_lr": 3e-3, "log_every": 1,
        "h_hidden_dim": 64, "global_hidden": 64, "local_hidden": 64}


class Recorder(NullLogger):
    def __init__(self):
        self.metrics = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append(metrics)


def make(name, h, encoder, **kw):
    cls = registry.get(name)
    params = {k: v for k, v in {**FAST, **kw}.items() if k in cls.defaults}
    return cls(h, encoder=encoder, **params)


@pytest.fixture(scope="module", params=TORCH_MODELS)
def trained(request, bb300, tiny_encoder):
    rec = Recorder()
    model = make(request.param, bb300["train"].hierarchy, tiny_encoder).fit(bb300["train"], bb300["val"], rec)
    return model, rec


def test_loss_decreases(trained, bb300):
    model, rec = trained
    losses = [m["train_loss"] for m in rec.metrics if "train_loss" in m]
    per_epoch = -(-len(bb300["train"]) // 16)
    assert len(losses) == 3 * per_epoch
    # 5%: BHCN's per-row f_i keeps its hierarchical term (which rises while the child predictions it
    # follows are still random) in every row's loss, so its total falls more slowly at first
    assert np.mean(losses[-per_epoch:]) < 0.95 * np.mean(losses[:per_epoch])
    val = [m for m in rec.metrics if "val_loss" in m]
    assert len(val) == 3 and val[-1]["val_loss"] < val[0]["val_loss"]


def test_scores_per_level(trained, bb300):
    model, _ = trained
    h = bb300["test"].hierarchy
    n = len(bb300["test"])
    scores = model.predict_proba(bb300["test"].texts)
    assert [s.shape for s in scores] == [(n, k) for k in h.sizes]
    assert all(np.isfinite(s).all() and (s >= 0).all() and (s <= 1 + 1e-5).all() for s in scores)
    pred = model.predict(bb300["test"].texts)
    if model.consistent:
        assert h.is_consistent(pred).all()


def test_save_load_reproduces_predictions_exactly(trained, bb300, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m.pt")
    loaded = type(model).load(tmp_path / "m.pt")
    texts = bb300["test"].texts
    for a, b in zip(model.predict_proba(texts), loaded.predict_proba(texts)):
        assert np.array_equal(a, b)
    assert loaded.params == model.params


def test_reference_set(trained, bb300):
    model, _ = trained
    ref = model.gen_reference_set(bb300["test"])
    h = bb300["test"].hierarchy
    from ktt.schema import level_column_names

    assert list(ref.columns) == ["targets", *map(str, range(24)), *h.leaf_names, *level_column_names(h.depth)]
    assert len(ref) == len(bb300["test"]) and set(ref.targets) <= set(h.leaf_names)
    codes, scores = model.predict_scored(bb300["test"].texts)
    assert (ref[[f"level{d}_class" for d in (1, 2, 3)]].to_numpy() == codes).all()
    for d in (1, 2, 3):  # the confidence is the score of the decoded path's class at that level
        assert np.allclose(ref[f"level{d}_confidence"], scores[d - 1][np.arange(len(codes)), codes[:, d - 1]])


class Killed(Exception):
    pass


class KillAfterFirstEpoch(RunLogger):
    def checkpoint(self, model, kind, state=None):
        path = super().checkpoint(model, kind, state)
        if kind == "last":
            raise Killed
        return path


@pytest.mark.parametrize("name", ["db_bhcn", "db_achmcnn"])
def test_resume_continues_exactly(name, bb300, tiny_encoder, tmp_path):
    h = bb300["train"].hierarchy
    straight = make(name, h, tiny_encoder, epochs=2, dropout=0.3).fit(bb300["train"], bb300["val"])
    logger = KillAfterFirstEpoch(name, "bb300", tmp_path)
    with pytest.raises(Killed):
        make(name, h, tiny_encoder, epochs=2, dropout=0.3).fit(bb300["train"], bb300["val"], logger)
    resumed = registry.get(name).load(logger.paths["last"])
    assert resumed.resume_state_["epoch"] == 0
    resumed.fit(bb300["train"], bb300["val"])
    a, b = straight.net_.state_dict(), resumed.net_.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_encoder_is_offline_minilm():
    from ktt.nn import load_pretrained

    tok, enc = load_pretrained("all-MiniLM-L6-v2")
    assert (enc.config.model_type, enc.config.hidden_size, enc.config.num_hidden_layers) == ("bert", 384, 6)
    assert tok("Spaghetti 500 g")["input_ids"][0] == tok.cls_token_id


def test_hub_name_without_network_fails_clearly(monkeypatch, bb300):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = registry.get("db_linear")(bb300["train"].hierarchy, encoder="distilbert-base-uncased")
    with pytest.raises(RuntimeError, match="cannot load encoder 'distilbert-base-uncased' from the Hugging Face Hub"):
        model.fit(bb300["train"], bb300["val"])


def test_bad_monitor_refused(bb300, tiny_encoder):
    with pytest.raises(ValueError, match="'monitor' of model 'db_linear': 'acc' is not loss or a validation metric"):
        make("db_linear", bb300["train"].hierarchy, tiny_encoder, monitor="acc").fit(bb300["train"], bb300["val"])


def test_frozen_encoder_encodes_the_training_split_once(bb300, tiny_encoder):
    """freeze_encoder: each training text goes through the encoder once for the whole fit, not once
    an epoch; the head still learns."""
    model = make("db_bhcn", bb300["train"].hierarchy, tiny_encoder, epochs=3, freeze_encoder=True, patience=5)
    calls, build = [], model._build

    def build_and_count(*args, **kwargs):  # fit builds the net: count the texts its encoder sees
        build(*args, **kwargs)
        model.net_.encoder.register_forward_hook(
            lambda mod, a, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    model._build = build_and_count
    rec = Recorder()
    model.fit(bb300["train"], bb300["val"], rec)
    # the training split once, then validation each epoch (3 epochs)
    assert sum(calls) == len(bb300["train"]) + 3 * len(bb300["val"])
    losses = [m["train_loss"] for m in rec.metrics if "train_loss" in m]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
