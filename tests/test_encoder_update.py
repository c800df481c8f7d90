"""Encoder updates (`ktt train MODEL DATASET --from RUN`, ``TorchModel.update``) on taxonomies small
enough to work out by hand: which rows an update trains on, which head weights it keeps, and how
each head tensor's class axes are bound to levels."""
import numpy as np
import pytest
import torch

from ktt import registry
from ktt.data import Split
from ktt.model import NullLogger
from ktt.taxonomy import Side, diff, text_hashes


def words(name: str, n: int = 4) -> list[str]:
    return [f"{name.lower()} item{i} {name.lower()}y" for i in range(n)]


V1 = {("Food", "Pasta", "Penne"): words("Penne"), ("Food", "Pasta", "Spaghetti"): words("Spaghetti"),
      ("Food", "Rice", "Basmati"): words("Basmati"), ("Home", "Clean", "Soap"): words("Soap"),
      ("Home", "Clean", "Mop"): words("Mop")}


def split(rows: dict) -> Split:
    paths = [p for p, texts in rows.items() for _ in texts]
    from ktt.hierarchy import Hierarchy
    return Split([t for texts in rows.values() for t in texts], paths, Hierarchy.from_paths(paths))


def side(s: Split, name: str) -> Side:
    return Side(name, s.hierarchy, s.codes, text_hashes(s.texts))


def versions(new: dict, old: dict = V1):
    """(version-1 split, version-2 split, their diff)."""
    s1, s2 = split(old), split(new)
    return s1, s2, diff(side(s1, "v1"), side(s2, "v2"))


# Three changes with no class added, renamed or moved: the rows say what changed
MORE_PENNE = {**V1, ("Food", "Pasta", "Penne"): words("Penne", 6)}  # two new rows
MERGED = {p: t for p, t in V1.items() if p[-1] != "Mop"} | {("Home", "Clean", "Soap"): words("Soap") + words("Mop")}
ENDS_AT_RICE = {p: t for p, t in V1.items() if p[-1] != "Basmati"} | {("Food", "Rice"): words("Basmati")}


@pytest.mark.parametrize("new, rows, classes", [
    (MORE_PENNE, words("Penne", 6)[4:], {("Food",), ("Food", "Pasta"), ("Food", "Pasta", "Penne")}),
    # Mop's rows are Soap's now: Soap gained them (Mop is gone); Home > Clean holds the same rows
    (MERGED, words("Mop"), {("Home", "Clean", "Soap")}),
    # Basmati's rows end at Food > Rice: the end class Food > Rice > (end) is new
    (ENDS_AT_RICE, words("Basmati"), {("Food", "Rice", "")}),
])
def test_update_rows_are_the_rows_whose_label_changed_or_that_are_new(new, rows, classes):
    from ktt.nn import row_changes, update_rows

    _, s2, d = versions(new)
    assert not [c for c in d.changes if c.kind != "removed"]  # nothing added, renamed or moved
    hashes, flagged = row_changes(d)
    assert hashes == set(text_hashes(rows).tolist())
    assert {p for lv, f in zip(s2.hierarchy.levels, flagged) for p, x in zip(lv, f) if x} == classes
    got, weights = update_rows(d, s2, 1.0, 0)
    hit = [i for i, t in enumerate(s2.texts) if t in rows]
    assert set(hit) <= set(got.tolist()) and len(got) == 2 * len(hit)  # as many others drawn (replay 1)
    assert weights.mean() == pytest.approx(1.0)


def test_nothing_changed_has_no_update_rows():
    from ktt.nn import row_changes, update_rows

    s1 = split(V1)
    d = diff(side(s1, "v1"), side(split(dict(reversed(V1.items()))), "v2"))
    assert row_changes(d)[0] == set() and not any(f.any() for f in row_changes(d)[1])
    assert len(update_rows(d, s1, 1.0, 0)[0]) == 0


def test_a_row_moved_from_validation_to_training_is_new_to_training():
    """Where both sides know which rows trained (a run logs it), a validation row of version 1
    in version 2's training split is a changed row, and its classes' training rows changed."""
    from ktt.nn import row_changes

    s = split(V1)
    old, new = side(s, "v1"), side(s, "v2")
    old.train, new.train = np.array([t != words("Soap")[0] for t in s.texts]), np.ones(len(s), bool)
    hashes, flagged = row_changes(diff(old, new))
    assert hashes == set(text_hashes(words("Soap")[:1]).tolist())
    assert {p for lv, f in zip(s.hierarchy.levels, flagged) for p, x in zip(lv, f) if x} == \
        {("Home",), ("Home", "Clean"), ("Home", "Clean", "Soap")}
    old.train = None  # not known on one side: every split's rows, and nothing changed
    assert row_changes(diff(old, new))[0] == set()


class Recorded(NullLogger):
    def __init__(self):
        self.metrics, self.checkpoints, self.epochs = {}, [], 0

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)
        self.epochs += "val_loss" in metrics

    def checkpoint(self, model, kind, state=None):
        self.checkpoints.append(kind)


FAST = {"epochs": 2, "batch_size": 8, "encoder_lr": 1e-3, "classifier_lr": 3e-3, "log_every": 1, "patience": 5}


@pytest.fixture(scope="module")
def old_bhcn(tiny_encoder):
    s1 = split(V1)
    return registry.create("db_bhcn", s1.hierarchy, encoder=tiny_encoder, **FAST).fit(s1, s1)


def head_rows(model, path):
    """The output row of class ``path`` in a BHCN head: (weights, bias) of its level's layer."""
    head, d, i = model.net_.head, len(path) - 1, model.hierarchy.class_index(path)
    layer = head.first if d == 0 else head.levels[d - 1]
    return torch.cat([layer.weight[i], layer.bias[i:i + 1]]).detach().clone()


@pytest.mark.parametrize("scope", ["new", "all"])
def test_a_merge_trains_the_class_that_gained_rows(old_bhcn, scope):
    """Mop merged into Soap: the update trains on Mop's rows (now Soap's) and as many others; with
    update_scope=new only the classes whose rows changed (Soap) train, starting from their old
    weights, and every other class and the encoder keep theirs."""
    s1, s2, d = versions(MERGED)
    log = Recorded()
    upd = registry.create("db_bhcn", s2.hierarchy, **{**old_bhcn.params, "update_scope": scope}).update(
        old_bhcn, d, s2, s2, log)
    assert log.metrics["update_rows"] == 8 and "best" in log.checkpoints
    soap, kept = ("Home", "Clean", "Soap"), ("Food", "Pasta", "Penne")
    assert not torch.equal(head_rows(upd, soap), head_rows(old_bhcn, soap))
    if scope == "new":
        assert torch.equal(head_rows(upd, kept), head_rows(old_bhcn, kept))
        assert torch.equal(head_rows(upd, ("Home",)), head_rows(old_bhcn, ("Home",)))
        enc_old, enc_new = old_bhcn.net_.encoder.state_dict(), upd.net_.encoder.state_dict()
        assert all(torch.equal(enc_old[k], enc_new[k]) for k in enc_old)


@pytest.mark.parametrize("scope, epochs", [("new", 4), ("all", 2)])
def test_an_update_runs_all_its_epochs_and_keeps_the_last(old_bhcn, scope, epochs):
    """update_epochs (update_scope=new; all: epochs) run whatever the validation metric does
    (patience 1), and each is the best checkpoint in turn: the last is the update."""
    _, s2, d = versions(MERGED)
    log = Recorded()
    registry.create("db_bhcn", s2.hierarchy, **{**old_bhcn.params, "update_scope": scope, "update_epochs": 4,
                                                "patience": 1}).update(old_bhcn, d, s2, s2, log)
    assert log.epochs == epochs and log.checkpoints.count("best") == epochs


@pytest.mark.parametrize("scope", ["new", "all"])
def test_nothing_changed_returns_the_old_weights(old_bhcn, scope):
    """The same rows and taxonomy: nothing to train; the update is the old model, transplanted
    (not a crash, not a fit over no rows), and it is the run's best checkpoint."""
    s1 = split(V1)
    d = diff(side(s1, "v1"), side(s1, "v2"))
    log = Recorded()
    upd = registry.create("db_bhcn", s1.hierarchy, **{**old_bhcn.params, "update_scope": scope}).update(
        old_bhcn, d, s1, s1, log)
    assert log.metrics["update_rows"] == 0 and log.checkpoints == ["best"]
    a, b = old_bhcn.net_.state_dict(), upd.net_.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert upd.predict_paths(words("Soap")[:1]) == old_bhcn.predict_paths(words("Soap")[:1])


@pytest.mark.parametrize("name", ["db_bhcn", "db_bhcn_awx"])
def test_transplant_binds_each_axis_to_its_level(name):
    """A new department with one category and one leaf: every level grows by one class, so the
    sizes alone cannot tell which level an axis is. Level 1 (old: Food > Pasta, Food > Rice,
    Home > Clean; new: Garden > Tools at 2) feeds level 2: the input column of Garden > Tools is new,
    and Food > Rice's column stays Food > Rice's."""
    from ktt.nn import transplant

    old = {p: t for p, t in V1.items() if p[-1] in ("Penne", "Basmati", "Soap")}
    s1, s2, d = versions({**old, ("Garden", "Tools", "Rake"): words("Rake")}, old)
    assert d.old.hierarchy.sizes == [2, 3, 3] and d.new.hierarchy.sizes == [3, 4, 4]
    torch.manual_seed(0)
    old = registry.create(name, d.old.hierarchy).build_head(8)
    new = registry.create(name, d.new.hierarchy).build_head(8)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    copied = transplant(old, new, d.correspondence(), d.old.hierarchy, d.new.hierarchy)
    w_old, w_new = old.levels[1].weight, new.levels[1].weight  # (level-2 classes, level-1 classes + 8 features)
    # leaves: Penne 0, Basmati 1, Rake 2 (new), Soap 3; level 1: Pasta 0, Rice 1, Tools 2 (new), Clean 3
    m = [0, 1, 3]
    assert torch.equal(w_new[m][:, m], w_old[:, :3]) and torch.equal(w_new[m][:, 4:], w_old[:, 3:])
    assert not copied["levels.1.weight"][:, 2].any() and not copied["levels.1.weight"][2].any()
    assert torch.equal(w_new[:, 2], before["levels.1.weight"][:, 2])
    assert copied["levels.1.weight"].sum() == 3 * 11
    # level 0 (Food 0, Garden 1 (new), Home 2) feeds level 1
    assert not copied["levels.0.weight"][:, 1].any() and not copied["levels.0.weight"][2].any()
    assert torch.equal(new.levels[0].weight[[0, 1, 3]][:, [0, 2]], old.levels[0].weight[:, :2])
    assert copied["norms.1.weight"].tolist() == [True, True, False, True]
    assert copied["first.bias"].tolist() == [True, False, True]


@pytest.mark.parametrize("name, params", [("db_linear", {}), ("db_bhcn", {"level_width": 1}), ("db_bhcn_awx", {}),
                                          ("db_ahmcnf", {}), ("db_achmcnn", {})])
def test_every_head_declares_its_class_axes(name, params):
    """Every encoder head declares which level each axis of its tensors is (BHCN with its levels
    projected too: level_width=1): on the change above, every tensor is copied in part, and along
    every class axis the new classes' entries are not copied."""
    from ktt.nn import transplant

    old_rows = {p: t for p, t in V1.items() if p[-1] in ("Penne", "Basmati", "Soap")}
    _, _, d = versions({**old_rows, ("Garden", "Tools", "Rake"): words("Rake")}, old_rows)
    old = registry.create(name, d.old.hierarchy, **params).build_head(8)
    new = registry.create(name, d.new.hierarchy, **params).build_head(8)
    copied = transplant(old, new, d.correspondence(), d.old.hierarchy, d.new.hierarchy)
    assert all(m.any() for m in copied.values())
    corr = {**dict(enumerate(d.correspondence())), "all": torch.cat([torch.as_tensor(c) for c in d.correspondence()])}
    for tensor, axes in new.class_axes.items():
        for axis, level in enumerate(axes):
            if level is not None:
                fresh = torch.as_tensor(corr[level] < 0).nonzero().squeeze(1)
                assert fresh.numel() and not copied[tensor].index_select(axis, fresh).any(), (tensor, axis)


def test_an_update_encodes_its_rows_and_validation_once(old_bhcn):
    """update_scope=new: the encoder is frozen, so the update rows and the validation split go
    through it once for all update_epochs, not validation once an epoch."""
    _, s2, d = versions(MERGED)
    calls = []
    hook = old_bhcn.net_.encoder.register_forward_hook(  # the update shares the old model's encoder
        lambda mod, a, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        registry.create("db_bhcn", s2.hierarchy, **{**old_bhcn.params, "update_epochs": 4}).update(
            old_bhcn, d, s2, s2, Recorded())
    finally:
        hook.remove()
    assert sum(calls) == 8 + len(s2)  # 8 update rows, then validation (here the training split)


def test_an_updates_last_checkpoint_is_refused_by_resume_in_one_line(old_bhcn, tmp_path):
    """An update's held weights and frozen encoder are not in its training state: resuming it
    (which would rebuild the optimiser over the encoder too) is refused by name, not a crash."""
    from types import SimpleNamespace

    from ktt.errors import BadValue
    from ktt.train import resumed

    s1, s2, d = versions(MERGED)

    class Last(Recorded):
        def checkpoint(self, model, kind, state=None):
            if kind == "last":
                model.save(tmp_path / "last.pt", state)

    registry.create("db_bhcn", s2.hierarchy, **{**old_bhcn.params, "update_epochs": 1}).update(old_bhcn, d, s2, s2, Last())
    with pytest.raises(BadValue, match="an update cannot be resumed"):
        resumed("db_bhcn", SimpleNamespace(hierarchy=s2.hierarchy), str(tmp_path / "last.pt"), None)
