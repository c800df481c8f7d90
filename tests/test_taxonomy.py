"""Taxonomy versions, diffs, relabelling, updates and the review loop, on small taxonomies whose
answers are worked out by hand (issue 29)."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import KTT, clean_env  # noqa: F401
from ktt.data import Split
from ktt.errors import BadValue
from ktt.hierarchy import Hierarchy
from ktt.taxonomy import Side, diff, digest, read_mapping, relabel, text_hashes

# Version 1 -> 2 by hand: Food > Pasta > Penne renamed Penne Rigate (same rows); Food > Dairy
# moved under Home (its child Milk carried along, not reported); Home > Clean > Mop removed (its
# rows gone); Home > Garden added with its child Rake (reported once, as Garden).
OLD = {("Food", "Pasta", "Spaghetti"): ["spaghetti long", "spaghetti thin"],
       ("Food", "Pasta", "Penne"): ["penne tubes"],
       ("Food", "Dairy", "Milk"): ["milk whole", "milk skim"],
       ("Home", "Clean", "Soap"): ["soap bar"],
       ("Home", "Clean", "Mop"): ["mop head", "mop stick"]}
NEW = {("Food", "Pasta", "Spaghetti"): ["spaghetti long", "spaghetti thin"],
       ("Food", "Pasta", "Penne Rigate"): ["penne tubes"],
       ("Home", "Dairy", "Milk"): ["milk whole", "milk skim"],
       ("Home", "Clean", "Soap"): ["soap bar"],
       ("Home", "Garden", "Rake"): ["rake metal"]}


def side(rows: dict, name: str, with_rows: bool = True) -> Side:
    paths = [p for p, texts in rows.items() for _ in texts]
    h = Hierarchy.from_paths(paths)
    if not with_rows:
        return Side(name, h)
    return Side(name, h, h.encode(paths), text_hashes([t for texts in rows.values() for t in texts]))


def test_digest_is_the_taxonomy_not_the_row_order():
    a = Hierarchy.from_paths(list(OLD))
    assert digest(a) == digest(Hierarchy.from_paths(list(reversed(list(OLD)))))
    assert digest(a) != digest(Hierarchy.from_paths(list(NEW)))
    assert len(digest(a)) == 12


def test_diff_by_rows():
    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    got = {(c.kind, c.old, c.new, c.rows) for c in d.changes}
    assert got == {("moved", ("Food", "Dairy"), ("Home", "Dairy"), 2),
                   ("added", None, ("Home", "Garden"), 1),
                   ("renamed", ("Food", "Pasta", "Penne"), ("Food", "Pasta", "Penne Rigate"), 1),
                   ("removed", ("Home", "Clean", "Mop"), None, 2)}
    # new class -> old class, level by level (classes are sorted paths):
    # level 1 old: Food>Dairy 0, Food>Pasta 1, Home>Clean 2; new: Food>Pasta, Home>Clean, Home>Dairy, Home>Garden
    # level 2 old: Dairy>Milk 0, Pasta>Penne 1, Pasta>Spaghetti 2, Clean>Mop 3, Clean>Soap 4
    corr = d.correspondence()
    assert corr[0].tolist() == [0, 1]
    assert corr[1].tolist() == [1, 2, 0, -1]
    assert corr[2].tolist() == [1, 2, 4, 0, -1]  # Penne Rigate, Spaghetti, Soap, Milk, Rake
    text = str(d)
    assert ": 1 added, 1 removed, 1 renamed, 1 moved\n" in text and "~ Food > Pasta > Penne  ->  Food > Pasta > Penne Rigate  (1 rows)" in text
    assert d.to_dict()["old"]["taxonomy"] == digest(side(OLD, "x").hierarchy)


def test_diff_without_rows_finds_moves_by_name_but_not_renames():
    d = diff(side(OLD, "v1", with_rows=False), side(NEW, "v2", with_rows=False))
    got = {(c.kind, c.old, c.new, c.rows) for c in d.changes}
    assert ("moved", ("Food", "Dairy"), ("Home", "Dairy"), None) in got
    assert ("removed", ("Food", "Pasta", "Penne"), None, None) in got
    assert ("added", None, ("Food", "Pasta", "Penne Rigate"), None) in got
    assert not any(c.kind == "renamed" for c in d.changes)


def test_identical_taxonomies_have_no_changes():
    d = diff(side(OLD, "a"), side(OLD, "b"))
    assert d.same and d.changes == [] and "the same" in str(d)


def test_relabel_longest_prefix_and_errors(tmp_path):
    f = tmp_path / "map.csv"
    f.write_text("old,new\nFood > Dairy,Home > Dairy\nFood > Pasta > Penne,Food > Pasta > Penne Rigate\n")
    mapping = read_mapping(f)
    target = Hierarchy.from_paths(list(NEW))
    old_rows = [list(p) for p in OLD if p[-1] != "Mop"]
    assert relabel(old_rows, mapping, target) == [list(p) for p in NEW if p[-1] != "Rake"]
    with pytest.raises(BadValue, match=r"row 5: label path 'Home > Clean > Mop' is not in the new taxonomy and "
                                       r"map.csv does not map it \(1 rows; 1 such paths in all\); add a line"):
        relabel([list(p) for p in OLD], mapping, target, where="map.csv")
    f.write_text("old,new\nFood > Dairy,Garage > Dairy\n")
    with pytest.raises(BadValue, match="'Food > Dairy' is mapped to 'Garage > Dairy', which is not a category"):
        relabel(old_rows, read_mapping(f), target)
    f.write_text("from,to\na,b\n")
    with pytest.raises(BadValue, match="needs exactly the columns old,new"):
        read_mapping(f)
    f.write_text("old,new\na,b\na,c\n")
    with pytest.raises(BadValue, match="line 3: 'a' is mapped twice"):
        read_mapping(f)


def split(rows: dict, h=None) -> Split:
    paths = [p for p, texts in rows.items() for _ in texts]
    return Split([t for texts in rows.values() for t in texts], paths, h or Hierarchy.from_paths(paths))


def words(name: str, n: int = 6) -> list[str]:
    return [f"{name.lower()} item{i} {name.lower()}y" for i in range(n)]


class Logged:
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, m, step=None):
        self.metrics.update(m)

    def checkpoint(self, *a, **k):
        pass


def test_tfidf_update_refits_only_the_changed_nodes():
    """By hand, for OLD -> NEW with six rows a leaf: Food > Pasta (children Spaghetti, Penne ->
    Penne Rigate, the same rows) and the moved Dairy (its lone child Milk) are kept; the root (Dairy
    moved from Food to Home: the root is their lowest common ancestor, and Food's rows go 18 -> 12,
    Home's 12 -> 18), Food (lost Dairy), Home (gained Dairy and Garden), Home > Clean (lost Mop) and
    the new Home > Garden are refitted: 5 of 7."""
    from ktt import registry

    old_rows = {p: words(p[-1]) for p in OLD}
    new_rows = {(p if p[-1] != "Penne" else ("Food", "Pasta", "Penne Rigate")): w for p, w in old_rows.items()
                if p[-1] != "Mop"}
    new_rows = {(("Home",) + p[1:] if p[1] == "Dairy" else p): w for p, w in new_rows.items()}
    new_rows[("Home", "Garden", "Rake")] = words("Rake")
    s1, s2 = split(old_rows), split(new_rows)
    old = registry.create("tfidf_hsgd", s1.hierarchy).fit(s1, s1)
    d = diff(Side("v1", s1.hierarchy, s1.codes, text_hashes(s1.texts)),
             Side("v2", s2.hierarchy, s2.codes, text_hashes(s2.texts)))
    log = Logged()
    upd = registry.create("tfidf_hsgd", s2.hierarchy, **old.params).update(old, d, s2, s2, log)
    assert log.metrics["nodes_kept"] == 2 and log.metrics["nodes_refit"] == 5
    assert log.metrics["rows_featurised"] == 30  # the root's
    # only the 6 Rake rows are new to training: "rake", "rakey" and 12 bigrams ("rake itemN", "itemN rakey")
    assert log.metrics["vocabulary_added"] == 14
    # the kept Pasta block answers with its renamed child; the moved Dairy keeps its only child
    assert upd.predict_paths(["penne item1 penney"]) == [["Food", "Pasta", "Penne Rigate"]]
    assert upd.predict_paths(["milk item2 milky"]) == [["Home", "Dairy", "Milk"]]
    assert upd.predict_paths(["rake item3 rakey"]) == [["Home", "Garden", "Rake"]]
    # a node whose children's rows changed at all is refitted too: Pasta with one more Spaghetti row
    # (two children: one decision, refitted whole)
    more = dict(new_rows)
    more[("Food", "Pasta", "Spaghetti")] = words("Spaghetti", 7)
    s3 = split(more)
    d3 = diff(d.old, Side("v3", s3.hierarchy, s3.codes, text_hashes(s3.texts)))
    log = Logged()
    registry.create("tfidf_hsgd", s3.hierarchy, **old.params).update(old, d3, s3, s3, log)
    assert log.metrics["nodes_refit"] == 6


def test_grow_vocabulary_appends_with_scikit_learn_idf():
    from ktt.tfidf import grow_vocabulary, make_vectorizer

    v = make_vectorizer({"min_df": 1, "ngram_max": 1})
    v.fit(["a b", "a c", "b c", "a"])
    g = grow_vocabulary(v, ["d e", "d"], n_docs=6)
    assert g.vocabulary_ == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    # idf = ln((1 + n) / (1 + df)) + 1: d in 2 of 6 documents, e in 1
    assert g.idf_[3:].tolist() == pytest.approx([np.log(7 / 3) + 1, np.log(7 / 2) + 1])
    assert g.idf_[:3].tolist() == pytest.approx(v.idf_.tolist()) and len(v.vocabulary_) == 3  # the old one unchanged
    assert g.transform(["d a"]).shape == (1, 5)
    assert grow_vocabulary(v, ["a b"], 6) is v


def test_encoder_head_transplant_copies_matched_classes():
    import torch

    from ktt.nn import transplant
    from models.db_bhcn.db_bhcn import BHCNHead

    h1, h2 = side(OLD, "v1").hierarchy, side(NEW, "v2").hierarchy
    corr = diff(side(OLD, "v1"), side(NEW, "v2")).correspondence()
    torch.manual_seed(0)
    old = BHCNHead(8, h1.sizes, 0.0, "relu", 384)
    new = BHCNHead(8, h2.sizes, 0.0, "relu", 384)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    copied = transplant(old, new, corr, h1, h2)
    # level 2's bias: every class but the new Rake (4) copied
    assert copied["levels.1.bias"].tolist() == [True, True, True, True, False]
    # level 2 rows: new Penne Rigate (0) <- old Penne (1); Milk (3) <- old Milk (0); Rake (4) is new
    w_old, w_new = old.levels[1].weight, new.levels[1].weight  # (level-2 classes, level-1 classes + hidden)
    assert torch.equal(w_new[0, 4:], w_old[1, 3:]) and torch.equal(w_new[3, 4:], w_old[0, 3:])
    # input columns are level-1 classes: new Home > Dairy (2) <- old Food > Dairy (0); Garden (3) is new
    assert torch.equal(w_new[0, 2], w_old[1, 0]) and torch.equal(w_new[0, 3], before["levels.1.weight"][0, 3])
    assert torch.equal(w_new[4], before["levels.1.weight"][4])
    assert torch.equal(new.first.weight, old.first.weight)  # level 0 unchanged
    assert torch.equal(new.norms[1].weight[:3], old.norms[1].weight[[1, 2, 0]])


def test_update_rows_are_the_changed_classes_and_as_many_others():
    from ktt.nn import update_rows

    s2 = split({p: words(p[-1]) for p in NEW})
    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    rows, weights = update_rows(d, s2, 0.5, 0)
    # the moved Dairy's, the added Garden's and the renamed Penne Rigate's rows, and half as many others
    changed = [i for i, p in enumerate(s2.paths) if p[:2] in {("Home", "Dairy"), ("Home", "Garden")} or
               p[-1] == "Penne Rigate"]
    assert len(changed) == 18 and set(changed) <= set(rows.tolist()) and len(rows) == 27
    # 9 of the 12 other rows drawn: each stands for 12 / 9 rows; scaled to a mean of 1 over 27 rows,
    # a changed row weighs 27 / (18 + 12) = 0.9 and a drawn one 0.9 * 4 / 3 = 1.2
    assert weights[np.isin(rows, changed)] == pytest.approx([0.9] * 18)
    assert weights[~np.isin(rows, changed)] == pytest.approx([1.2] * 9)


def test_review_rows_and_queue(tmp_path):
    from ktt.review import append_rows, queue, review_rows

    h = Hierarchy.from_paths(list(NEW))
    codes = h.encode([("Food", "Pasta", "Spaghetti"), ("Home", "Garden", "Rake")])
    scores = [np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.9, 0.0, 0.1, 0.0], [0.0, 0.1, 0.2, 0.5]]),
              np.array([[0.3, 0.6, 0, 0, 0], [0, 0, 0.05, 0.05, 0.4]])]
    rows = review_rows(["t1", "t2"], codes, h.confidences(codes, scores), h, [2, 1], "m", "abc")
    assert rows[0] == {"text": "t1", "answer": "Food > Pasta", "guess": "Food > Pasta > Spaghetti",
                       "confidences": "[0.9, 0.9, 0.6]", "model": "m", "taxonomy": "abc", "labels": ""}
    assert rows[1]["answer"] == "Home" and rows[1]["confidences"] == "[0.8, 0.5, 0.4]"
    append_rows(tmp_path / "r.csv", rows[:1])
    append_rows(tmp_path / "r.csv", rows[1:])
    df = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert df["text"].tolist() == ["t1", "t2"] and list(df.columns)[-1] == "labels"
    append_rows(tmp_path / "r.jsonl", rows)
    assert [json.loads(x)["text"] for x in (tmp_path / "r.jsonl").read_text().splitlines()] == ["t1", "t2"]
    assert queue(np.array([[0.9, 0.5], [0.9, np.nan], [0.2, 0.95]])).tolist() == [2, 0, 1]


def test_changed_classes_are_those_whose_rows_changed():
    """By hand, OLD -> NEW: Dairy's rows left Food for Home, Mop's left Home, Rake's joined it (level
    0: both changed); Home > Clean lost Mop, Home > Garden is new; the renamed Penne Rigate and the
    moved Dairy hold the same rows as before (unchanged). Then one Spaghetti row relabelled Penne:
    only the two leaves changed (their parent holds the same rows)."""
    from ktt.taxonomy import changed_classes

    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    got = [[p for p, hit in zip(lv, c) if hit] for lv, c in zip(d.new.hierarchy.levels, changed_classes(d))]
    assert got == [[("Food",), ("Home",)], [("Home", "Clean"), ("Home", "Garden")], [("Home", "Garden", "Rake")]]
    relabelled = {**OLD, ("Food", "Pasta", "Spaghetti"): ["spaghetti long"],
                  ("Food", "Pasta", "Penne"): ["penne tubes", "spaghetti thin"]}
    d = diff(side(OLD, "v1"), side(relabelled, "v2"))
    got = [[p for p, hit in zip(lv, c) if hit] for lv, c in zip(d.new.hierarchy.levels, changed_classes(d))]
    assert got == [[], [], [("Food", "Pasta", "Penne"), ("Food", "Pasta", "Spaghetti")]]
    assert changed_classes(diff(side(OLD, "v1", with_rows=False), side(NEW, "v2", with_rows=False))) is None


def run(*args, env):
    import subprocess

    return subprocess.run([str(KTT), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_taxonomy_versions_end_to_end(tmp_path, tracking):
    """A catalog's life through the CLI: two taxonomy versions, their diff from datasets, runs and
    registered versions; an update with --from; a promotion refused, then allowed; answers sent to
    review and brought back as a new version; older data relabelled with a mapping."""
    import os

    import mlflow

    from benchmarks.taxonomy_change import write_versions
    from ktt.data import load_dataset

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "KTT_DATASETS": str(tmp_path / "d"),
           "KTT_WEIGHTS": str(tmp_path / "w")}
    assert run("generate", "--name", "shop", "--rows", 900, "--no-track", env=env).returncode == 0
    v1, v2, change = write_versions(load_dataset("shop", tmp_path / "d"), tmp_path / "d", 3)
    (ren_old, ren_new), (mov_old, mov_new) = change["renamed"], change["moved"]
    out = run("taxonomy", "diff", v1, v2, env=env)
    assert out.returncode == 0, out.stderr
    assert "3 added, 1 renamed, 1 moved" in out.stdout and f"~ {' > '.join(ren_old)}  ->  {' > '.join(ren_new)}" in out.stdout
    ds1, ds2 = load_dataset(v1, tmp_path / "d"), load_dataset(v2, tmp_path / "d")
    assert ds1.manifest["taxonomy"] == digest(ds1.hierarchy) != ds2.manifest["taxonomy"]

    assert run("train", "tfidf_hsgd", v1, env=env).returncode == 0
    client = mlflow.MlflowClient()
    run1 = mlflow.search_runs(experiment_names=[v1]).run_id[0]
    assert client.get_run(run1).data.tags["ktt.taxonomy"] == digest(ds1.hierarchy)
    assert run("taxonomy", "diff", run1, v2, env=env).stdout.splitlines()[1:] == out.stdout.splitlines()[1:]
    assert run("export", run1, "--no-onnx", "--register", "shop", env=env).returncode == 0
    assert client.get_model_version("shop", "1").tags["ktt.taxonomy"] == digest(ds1.hierarchy)

    bad = run("train", "tfidf_hsgd", v2, "--from", "models:/shop@champion", "-p", "language=german", env=env)
    assert bad.returncode == 2 and "--from keeps what models:/shop@champion learned with language='english': " \
        "-p language='german' needs a model trained from scratch" in bad.stderr and "Traceback" not in bad.stderr
    up = run("train", "tfidf_hsgd", v2, "--from", "models:/shop@champion", "-p", "alpha=0.0002", env=env)
    assert up.returncode == 0, up.stderr
    run2 = mlflow.search_runs(experiment_names=[v2]).run_id[0]
    r2 = client.get_run(run2).data
    assert r2.tags["ktt.parent_run"] == run1 and r2.metrics["nodes_kept"] > 0 and r2.metrics["nodes_refit"] > 0
    logged = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run2, artifact_path="taxonomy_diff.json")).read())
    assert {c["kind"] for c in logged["changes"]} == {"added", "renamed", "moved"}

    refused = run("export", run2, "--no-onnx", "--register", "shop", env=env)
    assert refused.returncode == 2 and "models:/shop@champion answers in another taxonomy" in refused.stderr
    assert f"> {' > '.join(mov_old)}  ->  {' > '.join(mov_new)}" in refused.stderr
    assert "--allow-taxonomy-change" in refused.stderr and "Traceback" not in refused.stderr
    assert str(client.get_model_version_by_alias("shop", "champion").version) == "1"
    allowed = run("export", run2, "--no-onnx", "--register", "shop", "--allow-taxonomy-change", env=env)
    assert allowed.returncode == 0 and "taxonomy_change: taxonomy" in allowed.stdout
    assert str(client.get_model_version_by_alias("shop", "champion").version) == "2"
    assert run("taxonomy", "diff", "models:/shop/1", "models:/shop@champion", env=env).stdout.splitlines()[1:] == \
        out.stdout.splitlines()[1:]
    # two sibling leaves' names swapped: the same paths (the same taxonomy hash), other classes
    a, b = [p for p in ds2.hierarchy.levels[-1] if p[:-1] == ds2.hierarchy.levels[-1][0][:-1]][:2]
    swap = {a: b, b: a}
    rows = [(t, swap.get(tuple(p), tuple(p)), s) for s in ("train", "val", "test")
            for t, p in zip(getattr(ds2, s).texts, getattr(ds2, s).paths)]
    pd.DataFrame({"text": [r[0] for r in rows], "labels": [" > ".join(r[1]) for r in rows],
                  "split": [r[2] for r in rows]}).to_csv(tmp_path / "swap.csv", index=False)
    assert run("ingest", tmp_path / "swap.csv", "--name", "shop-swap", "--no-track", env=env).returncode == 0
    assert run("train", "tfidf_hsgd", "shop-swap", env=env).returncode == 0
    swapped = run("export", mlflow.search_runs(experiment_names=["shop-swap"]).run_id[0], "--no-onnx", "--register",
                  "shop", env=env)
    assert swapped.returncode == 2 and "(the same paths, other classes)" in swapped.stderr and \
        "2 renamed" in swapped.stderr

    # answers below the threshold go to review; reviewed rows come back as a new version
    pd.DataFrame({"title": ds2.test.texts[:60]}).to_csv(tmp_path / "in.csv", index=False)
    pred = run("predict", "models:/shop@champion", tmp_path / "in.csv", tmp_path / "out.csv", "--text-col", "title",
               "--threshold", 0.9, "--review", tmp_path / "review.csv", env=env)
    assert pred.returncode == 0, pred.stderr
    answers = pd.read_csv(tmp_path / "out.csv")
    review = pd.read_csv(tmp_path / "review.csv", keep_default_na=False)
    assert 0 < len(review) == answers["review"].sum() < 60
    assert review["text"].tolist() == answers.loc[answers["review"], "title"].tolist()
    assert set(review["taxonomy"]) == {digest(ds2.hierarchy)} and set(review["model"]) == {"models:/shop@champion"}
    truth = dict(zip(ds2.test.texts, ds2.test.paths))
    other = next(p for p in ds2.train.paths if p != truth[review["text"][0]])
    review.loc[0, "labels"] = " > ".join(other)  # a correction of a test row's label
    review = pd.concat([review, pd.DataFrame([{"text": "brand new title", "labels": " > ".join(other)}])])
    review.to_csv(tmp_path / "review.csv", index=False)
    back = run("ingest", tmp_path / "review.csv", "--name", "shop-v3", "--append", v2, "--no-track", env=env)
    assert back.returncode == 0, back.stderr
    assert f"{len(review) - 2} rows have no label yet" in back.stderr and "1 rows added" in back.stderr
    ds3 = load_dataset("shop-v3", tmp_path / "d")
    assert ds3.manifest["lineage"][-1] | {"source": None} == {
        "dataset": v2, "digest": ds2.digest, "taxonomy": ds2.taxonomy, "source": None, "rows_added": 1,
        "rows_corrected": 1}
    assert dict(zip(ds3.test.texts, ds3.test.paths))[review["text"].iloc[0]] == other
    assert len(ds3.train) == len(ds2.train) + 1 and len(ds3.test) == len(ds2.test)

    # older data relabelled into the new taxonomy with a mapping
    old = pd.DataFrame({"text": ds1.train.texts, "labels": [" > ".join(p) for p in ds1.train.paths]})
    old.to_csv(tmp_path / "old.csv", index=False)
    (tmp_path / "map.csv").write_text(f"old,new\n{' > '.join(ren_old)},{' > '.join(ren_new)}\n")
    bad = run("ingest", tmp_path / "old.csv", "--name", "old", "--map", tmp_path / "map.csv", "--to", v2,
              "--no-track", env=env)
    assert bad.returncode == 2 and "is not in the new taxonomy and map.csv does not map it" in bad.stderr
    assert f"add a line `{' > '.join(mov_old)}" in bad.stderr
    with open(tmp_path / "map.csv", "a") as f:
        f.write(f"{' > '.join(mov_old)},{' > '.join(mov_new)}\n")
    ok = run("ingest", tmp_path / "old.csv", "--name", "old", "--map", tmp_path / "map.csv", "--to", v2,
             "--no-track", env=env)
    assert ok.returncode == 0, ok.stderr
    assert set(load_dataset("old", tmp_path / "d").hierarchy.levels[-1]) <= set(ds2.hierarchy.levels[-1])


def test_diff_between_depths():
    deep = {("A", "B", "C"): ["x1"], ("A", "D", "E"): ["y1"]}
    flat = {("A", "B"): ["x1"], ("A", "D"): ["y1"]}
    d = diff(side(deep, "v1"), side(flat, "v2"))
    assert {(c.kind, c.old, c.new, c.rows) for c in d.changes} == {("removed", ("A", "B", "C"), None, 1),
                                                                    ("removed", ("A", "D", "E"), None, 1)}
    d = diff(side(flat, "v2"), side(deep, "v1"))
    assert {(c.kind, c.new) for c in d.changes} == {("added", ("A", "B", "C")), ("added", ("A", "D", "E"))}
    assert d.correspondence()[2].tolist() == [-1, -1]


@pytest.mark.parametrize("name", ["db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"])
def test_every_encoder_head_transplants_whole(name):
    """Every tensor of every encoder model's head finds its class axes: none is left as initialised,
    and the matched classes' output rows are the old ones."""
    import torch

    from ktt import registry
    from ktt.nn import transplant

    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    torch.manual_seed(0)
    old = registry.create(name, d.old.hierarchy).build_head(8)
    new = registry.create(name, d.new.hierarchy).build_head(8)
    copied = transplant(old, new, d.correspondence(), d.old.hierarchy, d.new.hierarchy)
    assert all(m.any() for m in copied.values())
    last_old, last_new = list(old.state_dict().values())[-1], list(new.state_dict().values())[-1]  # an output bias
    corr = d.correspondence()
    idx = corr[2] if len(last_new) == 5 else np.concatenate([np.where(c >= 0, c + o, -1) for c, o in
                                                             zip(corr, d.old.hierarchy.offsets)])
    keep = idx >= 0
    assert torch.equal(last_new[torch.as_tensor(keep)], last_old[torch.as_tensor(idx[keep])])


def test_a_changed_tfidf_node_is_what_a_refit_of_that_node_gives():
    """By hand: Food's node is one-vs-rest over Pasta, Dairy and Bread. A new leaf under Pasta
    (Fusilli, six rows) changes Pasta's children and Pasta's rows at Food's node (12 -> 18): both
    nodes are refitted whole, on the new rows, and each is weight for weight the fit of that node
    alone (scikit-learn's SGD on the node's rows, featurised by the updated vectoriser); the root
    (one child) and Dairy and Bread (their rows unchanged) are kept."""
    from ktt import registry
    from ktt.tfidf import fit_block

    old_rows = {p: words(p[-1]) for p in [("Food", "Pasta", "Spaghetti"), ("Food", "Pasta", "Penne"),
                                          ("Food", "Dairy", "Milk"), ("Food", "Bread", "Rye")]}
    new_rows = {**old_rows, ("Food", "Pasta", "Fusilli"): words("Fusilli")}
    s1, s2 = split(old_rows), split(new_rows)
    old = registry.create("tfidf_hsgd", s1.hierarchy).fit(s1)
    d = diff(Side("v1", s1.hierarchy, s1.codes, text_hashes(s1.texts)),
             Side("v2", s2.hierarchy, s2.codes, text_hashes(s2.texts)))
    log = Logged()
    upd = registry.create("tfidf_hsgd", s2.hierarchy, **old.params).update(old, d, s2, s2, log)
    assert (log.metrics["nodes_refit"], log.metrics["nodes_kept"]) == (2, 3)  # Food, Pasta; root, Dairy, Bread

    def block(model, level, parent):
        n = model.nodes_
        b = int(np.flatnonzero((n.level == level) & (n.parent == parent))[0])
        return n.blocks.fits()[b]
    for level, parent in ((1, 0), (2, s2.hierarchy.class_index(("Food", "Pasta")))):
        rows = np.flatnonzero(s2.codes[:, level - 1] == parent)
        alone = fit_block(upd.features([s2.texts[i] for i in rows]), s2.codes[rows, level], upd.make_sgd(),
                          upd.params["min_weight"])
        assert len(block(upd, level, parent)) == len(alone) == 3  # Pasta, Dairy, Bread; Fusilli, Penne, Spaghetti
        for (c1, w1, b1), (c2, w2, b2) in zip(block(upd, level, parent), alone):
            assert np.array_equal(c1, c2) and np.allclose(w1, w2, atol=1e-6) and b1 == pytest.approx(b2)
    assert upd.predict_paths(["fusilli item2 fusilliy"]) == [["Food", "Pasta", "Fusilli"]]