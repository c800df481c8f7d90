"""``ktt experiment <file>.yaml``: one declarative model comparison, one MLflow experiment.

A file names the data (generated, or a file ingested with ``ktt ingest``'s options), the
models with their overrides, an optional tuning budget, seeds and the metric to rank by::

    name: bigbasket
    data: {source: ../shared/data/bigbasket_products.parquet, ingest: {keep_duplicates: false}}
    models: {tfidf_lsgd: {}, db_bhcn: {epochs: 3}}
    tune: {n_trials: 10, models: [tfidf_hsgd]}       # optional
    train_rows: 8000                                  # optional seeded samples (val_rows too)
    seed: 0
    seeds: [0, 1, 2]         # optional: each model fitted once per seed (default: [seed]);
                             # a model's own ``seeds:`` among its overrides replaces it for that model
    baseline: tfidf_lsgd     # optional: intervals against this model (default: the best), or a
                             # mapping {model: its reference} (each hierarchical model vs its flat twin)
    rank_by: test_h_f1
    rank_order: max          # optional: min for losses, violation rates and times (their default)

A parent run holds the file, the ranked table (``ranking.md``: mean ± sd over seeds, and for
each model the paired bootstrap 95% interval of its difference from the best model, or from
its ``baseline``, in hierarchical F1 and leaf accuracy over the seeds both ran: test texts
resampled, the same draw for every seed) and a
bar chart with error bars (``ranking.png``); each model is a nested run holding one nested run
per seed (tuning studies are runs of their own, tagged with the experiment).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import yaml

from . import registry
from .compare import format_interval
from .errors import BadValue, NotFound, UserError

log = logging.getLogger(__name__)
KEYS = {"name", "experiment", "data", "models", "tune", "seed", "seeds", "baseline", "rank_by", "rank_order",
        "train_rows", "val_rows", "description"}
INGEST_KEYS = {"text_col", "label_cols", "label_sep", "depth", "invalid_rows", "keep_duplicates", "split_col",
               "split_ratios", "seed"}


def load_spec(path: str | Path) -> dict:
    """Read and validate an experiment file; errors name the file and the bad entry."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise NotFound(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadValue(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise BadValue(f"{path}: expected a mapping with name, data, models")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise BadValue(f"{path}: unknown keys {unknown}; known: {sorted(KEYS)}")
    for key in ("name", "data", "models"):
        if not spec.get(key):
            raise BadValue(f"{path}: '{key}' is missing")
    data = spec["data"]
    if not isinstance(data, dict) or ("generate" in data) == ("source" in data):
        raise BadValue(f"{path}: data needs exactly one of 'generate' (synthetic rows) or 'source' (a file)")
    bad = sorted(set(data.get("ingest") or {}) - INGEST_KEYS)
    if bad:
        raise BadValue(f"{path}: unknown ingest options {bad}; known: {sorted(INGEST_KEYS)}")
    if "source" in data:
        data["source"] = str((path.parent / data["source"]).resolve()) if not Path(data["source"]).is_absolute() \
            else data["source"]
    if not isinstance(spec["models"], dict):
        raise BadValue(f"{path}: models must map model names to overrides ({{tfidf_lsgd: {{}}}})")
    spec.setdefault("seed", 0)
    spec["seeds"] = check_seeds(spec.get("seeds", [spec["seed"]]), path)
    spec["model_seeds"] = {}
    for name, over in spec["models"].items():
        if isinstance(over, dict) and "seeds" in over:
            spec["model_seeds"][name] = check_seeds(over.pop("seeds"), f"{path}: models.{name}")
    base = spec.get("baseline")
    pairs = base if isinstance(base, dict) else {} if base is None else {"*": base}
    for model, ref in pairs.items():
        for x in (model, ref) if model != "*" else (ref,):
            if x not in spec["models"]:
                raise BadValue(f"{path}: baseline names {x!r}, which is not one of the models {list(spec['models'])}")
    for name in spec["models"]:
        try:  # every value each model will train with: an unknown name, a wrong type, a bad value
            model_params(spec, name)
        except (UserError, TypeError) as e:
            raise BadValue(f"{path}: models.{name}: {e}") from None
    spec.setdefault("rank_by", "test_h_f1")
    spec.setdefault("rank_order", "min" if lower_is_better(spec["rank_by"]) else "max")
    if spec["rank_order"] not in ("min", "max"):
        raise BadValue(f"{path}: rank_order must be 'min' or 'max', not {spec['rank_order']!r}")
    spec.setdefault("experiment", f"ktt-{spec['name']}")
    return spec


def check_seeds(seeds, where="seeds") -> list[int]:
    """A non-empty list of distinct integers (or ``"0,1,2"``), or ``BadValue`` naming the bad entry."""
    if isinstance(seeds, str):
        seeds = [s.strip() for s in seeds.split(",") if s.strip()]
    if not isinstance(seeds, list) or not seeds:
        raise BadValue(f"{where}: seeds must be a non-empty list of integers, not {seeds!r}")
    out = []
    for s in seeds:
        try:
            if isinstance(s, bool) or float(s) != int(float(s)):
                raise ValueError
            out.append(int(float(s)))
        except (TypeError, ValueError):
            raise BadValue(f"{where}: seed {s!r} is not an integer") from None
    if len(set(out)) != len(out):
        raise BadValue(f"{where}: seeds {out} repeat a seed")
    return out


def model_params(spec: dict, name: str, tuned: dict | None = None) -> dict:
    """What model ``name`` trains with: its defaults and ``hyperparameters.json`` entry, the
    experiment's seed, tuned values, then the file's overrides; checked by the model class."""
    params = {"seed": spec["seed"]} if "seed" in registry.get(name).defaults else {}
    return registry.params(name, {**params, **(tuned or {}), **(spec["models"][name] or {})})


def make_dataset(spec: dict, root: Path) -> str:
    """Generate or ingest the experiment's data into ``root``; returns the dataset name."""
    from .data import ingest, read_file

    data, name = spec["data"], f"exp_{spec['name']}"
    opts = {"seed": spec["seed"], **(data.get("ingest") or {})}
    if "label_cols" in opts and isinstance(opts["label_cols"], str):
        opts["label_cols"] = [c.strip() for c in opts["label_cols"].split(",")]
    if "generate" in data:
        from .synth import generate

        gen = data["generate"] or {}
        df, where = generate(gen.get("rows", 3000), spec["seed"], gen.get("noise", 0.05)), "ktt.synth"
    else:
        df, where = read_file(data["source"]), data["source"]
    # seeded samples of train and val; the test split is always whole
    ingest(df, root, name, where=where, overwrite=True, sample={s: spec.get(f"{s}_rows") for s in ("train", "val")},
           **opts)
    return name


def run_experiment(path: str | Path, datasets_root: str | Path | None = None,
                   weights_root: str | Path = "weights", seeds=None) -> tuple[str, list[dict]]:
    """Run every model of the file (once per seed: ``seeds`` overrides the file's); returns the
    parent run ID and the ranked rows."""
    spec = load_spec(path)  # first: a bad file fails before MLflow, the data or any model is touched
    if seeds is not None:
        spec["seeds"], spec["model_seeds"] = check_seeds(seeds, "--seeds"), {}
    import mlflow

    from .tracking import check_tracking_uri, set_experiment, start_run
    from .train import train_seeds
    from .tune import Sweep, run_sweep

    check_tracking_uri()
    root = Path(datasets_root or tempfile.mkdtemp(prefix="ktt-exp-"))
    dataset = make_dataset(spec, root)
    set_experiment(spec["experiment"])
    tags = {"ktt.experiment": spec["name"]}

    tuned = {}
    tune = spec.get("tune") or {}
    for name in tune.get("models", list(spec["models"]) if tune else []):
        study = run_sweep(Sweep(name, dataset, n_trials=int(tune.get("n_trials", 10)),
                                timeout=tune.get("timeout"), seed=spec["seed"], datasets_root=str(root),
                                weights_root=str(weights_root), experiment=spec["experiment"]))
        tuned[name] = study.best_trial.params

    rows = []
    with start_run(run_name=f"experiment-{spec['name']}", tags={**tags, "ktt.stage": "experiment"}) as parent:
        mlflow.log_dict(spec, "experiment.yaml")
        mlflow.log_params({"dataset": dataset, "models": ",".join(spec["models"]), "rank_by": spec["rank_by"],
                           "seed": spec["seed"], "seeds": ",".join(map(str, spec["seeds"]))})
        for name in spec["models"]:
            seeds_of = spec["model_seeds"].get(name, spec["seeds"])
            fit = train_seeds(name, dataset, seeds_of, overrides=model_params(spec, name, tuned.get(name)),
                              run_name=name, datasets_root=root, weights_root=weights_root, log_model=False, tags=tags)
            m = fit.metrics
            if spec["rank_by"] not in m:
                raise BadValue(f"rank_by {spec['rank_by']!r} is not a metric of the runs; "
                               f"some are {sorted(k for k in m if k.startswith('test_'))}")
            rows.append({"model": name, "run_id": fit.run_id, "runs": fit.runs, "seeds": seeds_of, "tuned": name in tuned,
                         **m})
        rows = rank(rows, spec["rank_by"], spec["rank_order"])
        intervals(rows, spec.get("baseline"))
        mlflow.log_dict({r["model"]: r.get("vs") for r in rows}, "intervals.json")
        mlflow.log_text(ranking_table(rows, spec["rank_by"]), "ranking.md")
        mlflow.log_figure(ranking_chart(rows, spec["rank_by"], spec["name"]), "ranking.png")
        mlflow.log_metric(f"best_{spec['rank_by']}", rows[0][spec["rank_by"]])
        mlflow.set_tag("ktt.best_model", rows[0]["model"])
    return parent.info.run_id, rows


def lower_is_better(metric: str) -> bool:
    """Losses, violation rates and times rank lowest first; every other metric highest first."""
    return any(k in metric for k in ("loss", "violation_rate", "time_s"))


def rank(rows: list[dict], rank_by: str, order: str = "max") -> list[dict]:
    """``rows`` best first by ``rank_by`` (``order``: ``max`` or ``min`` is best); ties keep file order."""
    return sorted(rows, key=lambda r: r[rank_by], reverse=order == "max")


def intervals(rows: list[dict], baseline: str | dict | None = None, n_boot: int = 2000) -> None:
    """Each row with a reference (``baseline``: one model for all, a mapping model -> reference,
    or None for the best) gets ``vs``: the paired bootstrap of its test texts against the
    reference's over the seeds both ran, the same text draw for every seed (``ktt.compare``),
    and ``vs_model``."""
    from .tracking import bootstrap_runs

    by_name = {r["model"]: r for r in rows}
    refs = baseline if isinstance(baseline, dict) else {r["model"]: baseline or rows[0]["model"] for r in rows}
    for r in rows:
        ref = by_name.get(refs.get(r["model"]))
        if ref is None or ref is r:
            continue
        common = [s for s in r["seeds"] if s in ref["seeds"]]
        if not common:
            log.warning("%s and %s share no seed: no paired interval", r["model"], ref["model"])
            continue
        pick = lambda row: [row["runs"][row["seeds"].index(s)] for s in common]  # noqa: E731
        r["vs"], r["vs_model"], r["vs_seeds"] = bootstrap_runs(pick(ref), pick(r), n_boot), ref["model"], common


def ranking_table(rows: list[dict], rank_by: str) -> str:
    """The ranked models: each metric as mean ± sd over seeds, then each model's difference from the
    reference model with its 95% interval (a star when it excludes 0)."""
    cols = [rank_by] + [c for c in ("test_h_f1", "test_leaf_accuracy", "test_violation_rate", "train_time_s")
                        if c != rank_by]
    refs = {r["vs_model"] for r in rows if "vs_model" in r}
    ref = next(iter(refs)) if len(refs) == 1 else None
    against = ["against"] if len(refs) > 1 else []
    vs = ([f"Δ hF1 vs {ref} [95% CI]", f"Δ leaf acc vs {ref} [95% CI]"] if ref else
          ["Δ hF1 [95% CI]", "Δ leaf acc [95% CI]"] if refs else [])
    vs = against + vs
    lines = ["| rank | model | " + " | ".join(cols + vs) + " | run |", "|---" * (len(cols) + len(vs) + 3) + "|"]

    def cell(r, c):
        digits = 0 if c == "train_time_s" else 4
        sd = r.get(f"{c}_sd")
        return f"{r[c]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None and len(r.get("runs", [])) > 1 else "")

    def ci(r, m):
        if "vs" not in r:
            return "(reference)" if ref or any(x.get("vs_model") == r["model"] for x in rows) else ""
        x = r["vs"][m]
        return format_interval(x, " *")
    for i, r in enumerate(rows, 1):
        vals = " | ".join([cell(r, c) for c in cols] + ([r.get("vs_model", "")] if against else [])
                          + ([ci(r, "h_f1"), ci(r, "leaf_accuracy")] if refs else []))
        lines.append(f"| {i} | {r['model']}{' (tuned)' if r['tuned'] else ''} | {vals} | {r['run_id'][:8]} |")
    return "\n".join(lines) + "\n"


def ranking_chart(rows: list[dict], rank_by: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    ax.barh([r["model"] for r in rows][::-1], [r[rank_by] for r in rows][::-1], color="#4c72b0",
            xerr=[r.get(f"{rank_by}_sd", 0.0) for r in rows][::-1], capsize=4)
    ax.set_xlabel(f"{rank_by} (mean ± sd over seeds)")
    ax.set_title(f"{title}: models by {rank_by}")
    fig.tight_layout()
    return fig
