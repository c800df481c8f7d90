"""The catalog loop's joins (issue 40): updates with ``--from`` for every kind of change, each
defect reproduced on a tree small enough to work out by hand."""
import numpy as np
import pandas as pd
import pytest

from ktt import registry
from ktt.data import Split
from ktt.hierarchy import Hierarchy
from ktt.taxonomy import Side, diff, text_hashes


def words(name: str, n: int = 6) -> list[str]:
    return [f"{name.lower()} item{i} {name.lower()}y" for i in range(n)]


def version(train: dict, held: dict | None = None, name: str = "v"):
    """A taxonomy version: its training split (``{path: texts}``) and its side, whose rows are
    the training rows and ``held``'s (rows of other splits: they make a class exist without
    training rows)."""
    held = held or {}
    paths = [p for p, t in train.items() for _ in t]
    every = paths + [p for p, t in held.items() for _ in t]
    h = Hierarchy.from_paths(every)
    texts = [t for ts in train.values() for t in ts]
    side = Side(name, h, h.encode(every), text_hashes(texts + [t for ts in held.values() for t in ts]),
                np.arange(len(every)) < len(paths))
    return Split(texts, paths, h), side


class Logged:
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, m, step=None):
        self.metrics.update(m)


def updated(model: str, v1, v2, **params):
    (s1, side1), (s2, side2) = v1, v2
    old = registry.create(model, s1.hierarchy, **params).fit(s1)
    log = Logged()
    upd = registry.create(model, s2.hierarchy, **old.params).update(old, diff(side1, side2), s2, s2, log)
    full = registry.create(model, s2.hierarchy, **old.params).fit(s2)
    return old, upd, full, log.metrics


PASTA = {("Food", "Pasta", "Spaghetti"): words("Spaghetti"), ("Food", "Pasta", "Penne"): words("Penne"),
         ("Food", "Dairy", "Milk"): words("Milk"), ("Home", "Clean", "Soap"): words("Soap"),
         ("Home", "Clean", "Mop"): words("Mop")}


@pytest.mark.parametrize("model", ["tfidf_hsgd", "tfidf_lsgd"])
def test_an_update_with_nothing_to_refit_keeps_every_node(model):
    """The crash of an update that changes no node ("Found array with 0 sample(s)"): the same rows
    again keep every classifier as it was."""
    v1, v2 = version(PASTA), version(PASTA)
    old, upd, _, m = updated(model, v1, v2)
    assert m["nodes_refit"] == m["rows_featurised"] == 0
    texts = [t for ts in PASTA.values() for t in ts] + ["penne reviewed later", "anything else"]
    assert upd.predict_paths(texts) == old.predict_paths(texts)
    assert np.array_equal(upd.nodes_.blocks.w, old.nodes_.blocks.w)


def test_a_lone_child_node_is_refitted_once_a_sibling_has_training_rows():
    """Penne exists (its rows are in validation) but Pasta trained on Spaghetti alone, which had
    P = 1; once Penne's reviewed rows join training the node has two children, and Penne is
    answered as a refit answers it."""
    train = {p: t for p, t in PASTA.items() if p[-1] != "Penne"}
    v1 = version(train, {("Food", "Pasta", "Penne"): ["penne held out"]})
    v2 = version(PASTA, {("Food", "Pasta", "Penne"): ["penne held out"]})
    old, upd, full, m = updated("tfidf_hsgd", v1, v2)
    probe = words("Penne")
    assert ["Food", "Pasta", "Penne"] not in old.predict_paths(probe)
    assert upd.predict_paths(probe) == full.predict_paths(probe) == [["Food", "Pasta", "Penne"]] * 6


def test_relabels_between_siblings_refit_the_node_though_its_counts_hold():
    """v1 had two of Spaghetti's titles labelled Penne and two of Penne's labelled Spaghetti; v2
    corrects them: every count is the same (and the taxonomy: the diff reports no change), the
    rows are not, and the update answers as the refit does."""
    sp, pe = words("Spaghetti"), words("Penne")
    swapped = {**PASTA, ("Food", "Pasta", "Spaghetti"): sp[2:] + pe[:2], ("Food", "Pasta", "Penne"): pe[2:] + sp[:2]}
    old, upd, full, m = updated("tfidf_hsgd", version(swapped), version(PASTA))
    assert m["nodes_refit"] == 1 and m["nodes_kept"] == 5  # Pasta; the root, Food, Home, Dairy, Clean
    assert upd.predict_paths(sp + pe) == full.predict_paths(sp + pe) == \
        [["Food", "Pasta", "Spaghetti"]] * 6 + [["Food", "Pasta", "Penne"]] * 6


def test_a_child_left_without_training_rows_refits_its_one_vs_rest_node():
    """Food is one-vs-rest over Pasta, Dairy and Bread; v2 relabels every Bread training row to
    Dairy (Bread lives on in validation): the partial refit of Bread's decision had no positive
    row and crashed; the node is refitted whole over its two remaining children."""
    three = {**PASTA, ("Food", "Bread", "Rye"): words("Rye")}
    moved = {**PASTA, ("Food", "Dairy", "Milk"): words("Milk") + words("Rye")}
    v1 = version(three, {("Food", "Bread", "Rye"): ["rye held out"]})
    v2 = version(moved, {("Food", "Bread", "Rye"): ["rye held out"]})
    _, upd, full, m = updated("tfidf_hsgd", v1, v2)
    probe = words("Rye")
    assert upd.predict_paths(probe) == full.predict_paths(probe) == [["Food", "Dairy", "Milk"]] * 6


def test_rows_that_changed_split_refit_their_nodes():
    """A catalog ingested anew without a split column draws its split again: a title that trained
    v1 is in v2's test split and one of v1's test titles trains v2. Every (text, class) pair is the
    same, and so is the taxonomy, but Spaghetti's training rows are not: Pasta, Food and the root
    are refitted (comparing every split's rows, they were kept, trained on the old split)."""
    sp = words("Spaghetti")
    v1 = version({**PASTA, ("Food", "Pasta", "Spaghetti"): sp[:5]}, {("Food", "Pasta", "Spaghetti"): sp[5:]})
    v2 = version({**PASTA, ("Food", "Pasta", "Spaghetti"): sp[1:]}, {("Food", "Pasta", "Spaghetti"): sp[:1]})
    assert diff(v1[1], v2[1]).changes == []
    _, _, _, m = updated("tfidf_hsgd", v1, v2)
    assert (m["nodes_refit"], m["nodes_kept"]) == (3, 3)  # root, Food, Pasta; Dairy, Home, Clean


def test_a_text_reviewed_twice_takes_its_last_label_whether_new_or_known(tmp_path):
    """The policy for conflicting reviews: a new text reviewed Penne, Spaghetti, Penne joins train
    once, as Penne (its last review; the first is an exact repeat of it, kept so order decides);
    a known text reviewed twice takes its last label, in its own split."""
    import pandas as pd

    from ktt.data import append, ingest, load_dataset

    rows = [{"text": t, "labels": " > ".join(p)} for p, ts in PASTA.items() for t in ts]
    ingest(pd.DataFrame(rows), tmp_path, "v1", label_sep=">", split_ratios=(0.6, 0.2, 0.2))
    v1 = load_dataset("v1", tmp_path)
    reviews = pd.DataFrame({"text": ["new title", "new title", "new title", "milk item0 milky", "milk item0 milky"],
                            "labels": ["Food > Pasta > Penne", "Food > Pasta > Spaghetti", "Food > Pasta > Penne",
                                       "Food > Dairy > Milk", "Home > Clean > Soap"]})
    _, _, report = append(v1, reviews, tmp_path, "v2", label_sep=">")
    v2 = load_dataset("v2", tmp_path)
    label = {t: p for s in (v2.train, v2.val, v2.test) for t, p in zip(s.texts, s.paths)}
    assert v2.train.texts.count("new title") == 1 and "new title" not in v2.val.texts + v2.test.texts and label["new title"] == ("Food", "Pasta", "Penne")
    assert label["milk item0 milky"] == ("Home", "Clean", "Soap")
    assert (report["rows_added"], report["rows_corrected"], report["reviews_overridden"]) == (1, 1, 3)


def readme_commands(step: str) -> list[str]:
    """The ``ktt`` commands of the README's usage step ``step`` (``# 8. ...`` up to the next step),
    as written there, comments cut."""
    from conftest import ROOT

    lines, on, more = [], False, False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("# ") and line[2:].split(".")[0].isdigit():
            on = line.startswith(f"# {step}.")
        elif on and (more or line.startswith("ktt ")):
            part = line.split("  #")[0].strip()
            lines[-1:] = [lines[-1][:-1] + " " + part] if more else [*lines[-1:], part]
            more = part.endswith("\\")
    return lines


def test_readme_catalog_loop_runs_as_written_on_bigbasket(tmp_path, tracking, raw_csv):
    """The README's steps 1, 2 and 4 (ingest, train, register), then step 8, command for command, on
    BigBasket: 2,000 products held out of the catalog are the week's new titles; an oracle reviews
    30 of those sent to review; they come back as bigbasket-v2, the champion is updated with --from
    (the issue's crash: no node needed refitting) and promoted; last year's rows, under a category
    since renamed, are relabelled into the new version; a category added with no row is answered
    from its name after the next update; categories are proposed from the week's titles."""
    import os
    import shlex
    import subprocess

    import mlflow

    from conftest import KTT
    from ktt.data import load_dataset

    raw = pd.read_csv(raw_csv, dtype=str, keep_default_na=False)
    raw = raw[(raw["product"].str.strip() != "") & (raw["type"].str.strip() != "")]
    path = raw["category"] + " > " + raw["sub_category"] + " > " + raw["type"]
    common = path.map(path.value_counts()) >= 20  # held-out titles' categories stay in the catalog
    held = raw[common & ~raw["product"].duplicated(keep=False)].sample(2000, random_state=0)
    raw.drop(held.index).to_csv(tmp_path / "catalog.csv", index=False)
    pd.DataFrame({"text": held["product"]}).to_csv(tmp_path / "titles.csv", index=False)
    truth = dict(zip(held["product"], path[held.index]))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "KTT_DATASETS": str(tmp_path / "d"),
           "KTT_WEIGHTS": str(tmp_path / "w")}

    def ktt(line: str):
        args = [a if a != "../shared/data/raw/bigbasket_products.csv" else str(tmp_path / "catalog.csv")
                for a in shlex.split(line)[1:]]
        if "<run id>" in line:
            args[args.index("<run")] = mlflow.search_runs(search_all_experiments=True, order_by=["start_time DESC"]).run_id[0]
            args.remove("id>")
        out = subprocess.run([str(KTT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert out.returncode == 0, f"{line}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr
        return out
    setup = [c for c in readme_commands("1") if "raw/bigbasket_products.csv" in c] + \
        [c for c in readme_commands("2") if c.startswith("ktt train tfidf_hsgd bigbasket")] + \
        [c for c in readme_commands("4") if "--register bigbasket" in c]
    loop = readme_commands("8")
    assert len(setup) == 3 and [c.split()[1] for c in loop] == ["predict", "ingest", "taxonomy", "train", "export",
                                                                 "ingest", "taxonomy", "train", "discover"]
    for line in setup:
        ktt(line)
    ktt(loop[0])  # predict, the unsure answers to review
    review = pd.read_csv(tmp_path / "review.csv", keep_default_na=False)
    assert 100 < len(review) < 2000 and set(review["text"]) <= set(truth)
    review.loc[:29, "labels"] = review["text"][:30].map(truth)
    review.to_csv(tmp_path / "review.csv", index=False)
    out = ktt(loop[1])
    assert f"{len(review) - 30} rows have no label yet" in out.stderr and "30 rows added" in out.stderr
    v2 = load_dataset("bigbasket-v2", tmp_path / "d")
    assert set(review["text"][:30]) <= set(v2.train.texts)
    assert ": the same" in ktt(loop[2]).stdout  # reviewed rows in known categories: the taxonomy held
    ktt(loop[3])  # the update
    client = mlflow.MlflowClient()
    upd = mlflow.search_runs(experiment_names=["bigbasket-v2"]).iloc[0]
    assert upd["tags.ktt.parent_run"] and upd["metrics.nodes_kept"] > 0
    ktt(loop[4])  # promoted: the same taxonomy
    assert client.get_model_version_by_alias("bigbasket", "champion").run_id == upd.run_id
    # last year's rows, when Beauty & Hygiene > Hair Care was called Hair
    hair = raw[raw["sub_category"] == "Hair Care"].head(50)
    pd.DataFrame({"text": "old " + hair["product"],
                  "labels": "Beauty & Hygiene > Hair > " + hair["type"]}).to_csv(tmp_path / "old.csv", index=False)
    (tmp_path / "map.csv").write_text("old,new\nBeauty & Hygiene > Hair,Beauty & Hygiene > Hair Care\n")
    ktt(loop[5])
    old = load_dataset("old", tmp_path / "d")
    assert {p[:2] for s in (old.train, old.val, old.test) for p in s.paths} == {("Beauty & Hygiene", "Hair Care")}
    # a category added before its rows, answered from its name and description after the update (issue 44)
    ktt(loop[6])
    ktt(loop[7])
    from ktt import registry
    from ktt.tracking import resolve_source

    new = mlflow.search_runs(experiment_names=["bigbasket-v3"]).iloc[0]
    model = registry.get("tfidf_hsgd").load(resolve_source(new.run_id).checkpoint)
    assert [tuple(p) for p in model.predict_paths(["kombucha scoby"])] == [("Beverages", "Tea", "Kombucha")]
    ktt(loop[8])  # proposals found in the week's titles
    from ktt.discover import COLUMNS

    found = pd.read_csv(tmp_path / "proposals.csv")
    assert list(found.columns) == COLUMNS and len(found) > 0 and (found["size"] >= 3).all()


def test_reviews_in_file_order_and_no_duplicate_across_splits(tmp_path):
    """Two defects of the append, found by the hostile review: a review file with a split column
    let the earlier review win (rows were grouped by split first); and a text the dataset holds
    under two labels, in train and in test, corrected to one label, stood twice, the same row in
    both splits. The last review wins; the corrected copy in the later split is dropped."""
    from ktt.data import append, load_dataset, write_dataset

    splits = {"train": pd.DataFrame({"text": ["shared title", "soap bar", "penne tubes"],
                                     "labels": [["Food", "Pasta", "Penne"], ["Home", "Clean", "Soap"],
                                                ["Food", "Pasta", "Penne"]]}),
              "val": pd.DataFrame({"text": ["mop head"], "labels": [["Home", "Clean", "Mop"]]}),
              "test": pd.DataFrame({"text": ["shared title", "mop stick"],
                                    "labels": [["Home", "Clean", "Soap"], ["Home", "Clean", "Mop"]]})}
    h = Hierarchy.from_paths(tuple(p) for s in splits.values() for p in s["labels"])
    write_dataset(splits, h, tmp_path, "v1")
    reviews = pd.DataFrame({"text": ["brand new thing", "brand new thing", "shared title"],
                            "labels": ["Food > Pasta > Penne", "Home > Clean > Soap", "Home > Clean > Soap"],
                            "split": ["test", "train", "train"]})
    _, _, report = append(load_dataset("v1", tmp_path), reviews, tmp_path, "v2", label_sep=">")
    v2 = load_dataset("v2", tmp_path)
    rows = [(s, t, p) for s in ("train", "val", "test") for t, p in zip(getattr(v2, s).texts, getattr(v2, s).paths)]
    assert [r for r in rows if r[1] == "brand new thing"] == [("train", "brand new thing", ("Home", "Clean", "Soap"))]
    assert [r for r in rows if r[1] == "shared title"] == [("train", "shared title", ("Home", "Clean", "Soap"))]
    assert (report["reviews_overridden"], report["rows_corrected"], report["rows_dropped_as_duplicates"]) == (1, 1, 1)
    assert report["paths_added"] == []
    # a review naming a class the dataset lacks (last week's review of a class since renamed, say) says so
    _, _, report = append(v2, pd.DataFrame({"text": ["mop head"], "labels": ["Home > Clean > Mops"]}), tmp_path, "v3",
                          label_sep=">")
    assert report["paths_added"] == ["Home > Clean > Mops"] and report["taxonomy_changed"]


def test_append_keeps_the_last_valid_review_and_one_copy_within_a_split(tmp_path):
    """The second hostile review: with --invalid-rows drop, a later invalid row of a text erased its
    earlier valid review (and shifted the row number its message named); a text held twice in
    train under two labels, corrected to one, stood twice in train."""
    from ktt.data import IngestError, append, load_dataset, write_dataset

    splits = {"train": pd.DataFrame({"text": ["milk 1l", "milk 1l", "soap bar"],
                                     "labels": [["Food", "Dairy"], ["Food", "Pasta"], ["Home", "Clean"]]}),
              "val": pd.DataFrame({"text": ["penne"], "labels": [["Food", "Pasta"]]}),
              "test": pd.DataFrame({"text": ["mop"], "labels": [["Home", "Clean"]]})}
    write_dataset(splits, Hierarchy.from_paths(tuple(p) for s in splits.values() for p in s["labels"]), tmp_path, "v1")
    v1 = load_dataset("v1", tmp_path)
    reviews = pd.DataFrame({"text": ["soap bar", "milk 1l", "soap bar"],
                            "labels": ["Home > Laundry", "Food > Dairy", "Home >"]})
    with pytest.raises(IngestError, match="row 3"):
        append(v1, reviews, tmp_path, "v2", label_sep=">")
    _, _, report = append(v1, reviews, tmp_path, "v2", label_sep=">", invalid_rows="drop")
    v2 = load_dataset("v2", tmp_path)
    train = list(zip(v2.train.texts, v2.train.paths))
    assert train.count(("milk 1l", ("Food", "Dairy"))) == 1 and ("soap bar", ("Home", "Laundry")) in train
    assert (report["reviews_overridden"], report["rows_dropped_as_duplicates"]) == (0, 1)
