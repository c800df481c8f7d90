"""The ``ktt`` command line. Heavy libraries are imported inside commands, never at start-up."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback

import click

from .errors import BadValue, UserError, missing_dependency


class KTTGroup(click.Group):
    """A user's mistake (:class:`ktt.errors.UserError`) is one line and exit code 2 (with ``-v``,
    its traceback first). Anything else is a bug: its traceback, then a line saying so, exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise  # click's own: --help, usage errors
        except UserError as e:
            if ctx.params.get("verbose"):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except MemoryError:  # what a fit could not foresee: said plainly, not as a bug
            click.echo(f"error: this machine ran out of memory during `ktt {ctx.invoked_subcommand}`: the data or "
                       "the model is too large for it; use fewer rows or features (min_df, ngram_max), a smaller "
                       "model, or a machine with more memory", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:
            if (why := missing_dependency(e)) is None:
                traceback.print_exc()
                why = f"unexpected ModuleNotFoundError (a bug in KTT: {e})"
            click.echo(f"error: {why}", err=True)
            sys.exit(2)
        except Exception as e:
            if type(e).__module__.startswith("mlflow") and "API request to" in str(e):  # the server failed a request
                from .tracking.logs import cause

                if ctx.params.get("verbose"):
                    traceback.print_exc()
                click.echo(f"error: the MLflow tracking server failed a request ({cause(e)}); nothing after it was "
                           "logged. Check the server and run the command again", err=True)
                sys.exit(2)
            traceback.print_exc()
            click.echo(f"error: unexpected {type(e).__name__} (a bug in KTT, not a mistake in your input; "
                       "the traceback above says where)", err=True)
            sys.exit(1)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


@click.group(cls=KTTGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose):
    """KTT: hierarchical text classification, tracked end to end."""
    # SIGTERM (timeout, docker stop, Kubernetes) unwinds like Ctrl-C: an MLflow run ends FAILED, temp files go
    signal.signal(signal.SIGTERM, _terminated)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # a tracking server gone mid-fit: a request is given up after about 2 minutes (5 tries of 20 s when it hangs,
    # backoff 2+4+8+16 s when it refuses), not MLflow's 7 retries of 120 s (18 minutes); each is the user's to set
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # its retries end in KTT's own one-line error (ktt.tracking.logs.TrackingLost)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _split_ratios(ctx, param, value):
    try:
        parts = [float(x) for x in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not three comma-separated numbers") from None
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r} must be three numbers: train,val,test")
    return parts


def _ingest_options(f):
    opts = [
        click.option("--text-col", default="text", show_default=True, help="Column holding the text."),
        click.option("-c", "--label-cols", default="labels", show_default=True,
                     help="Label column, or several comma-separated columns, coarsest first."),
        click.option("--label-sep", default=">", show_default=True,
                     help="Separator inside a single string label column (`a > b > c`)."),
        click.option("--depth", type=click.IntRange(min=1), default=None,
                     help="Deepest level to keep; deeper paths are cut. Shorter paths keep their length."),
        click.option("--invalid-rows", type=click.Choice(["error", "drop"]), default="error", show_default=True,
                     help="Refuse, or drop and report, rows with empty text, no label or an empty class name."),
        click.option("--keep-duplicates", is_flag=True, help="Keep exact duplicate (text, path) rows."),
        click.option("--split", "split_ratios", default="0.8,0.1,0.1", show_default=True, callback=_split_ratios,
                     help="train,val,test ratios when the data has no split column."),
        click.option("--split-col", default="split", show_default=True,
                     help="A column of train/val/test values honoured when present."),
        click.option("--seed", default=0, show_default=True, help="Seed of the random split."),
        click.option("--out", "out_root", default="datasets", show_default=True, envvar="KTT_DATASETS",
                     help="Datasets folder (env KTT_DATASETS)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing dataset of that name."),
        click.option("--track/--no-track", default=True, show_default=True,
                     help="Log the dataset to MLflow as a dataset input."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _finish_ingest(df, name, where, opts, meta, parent=None, relabel=None):
    from . import data

    if opts["track"]:  # before anything is written: a dataset must not be left behind by a failed command
        from .tracking import check_tracking_uri
        check_tracking_uri()

    kw = dict(text_col=opts["text_col"], label_cols=[c.strip() for c in opts["label_cols"].split(",")],
              label_sep=opts["label_sep"], depth=opts["depth"], invalid_rows=opts["invalid_rows"],
              keep_duplicates=opts["keep_duplicates"], split_col=opts["split_col"] or None, seed=opts["seed"],
              relabel=relabel)
    if parent is not None:
        path, hierarchy, report = data.append(parent, df, opts["out_root"], name, where=where,
                                              overwrite=opts["overwrite"], **kw)
        click.echo(f"{name}: {report['rows_added']} rows added to {parent.name}'s, {report['rows_corrected']} "
                   "relabelled" + ("; the taxonomy changed" if report.get("taxonomy_changed") else "") +
                   ("; new paths: " + ", ".join(report["paths_added"][:3]) + (" ..." if len(report["paths_added"]) > 3
                                                                               else "") if report.get("paths_added") else "") +
                   (f"; {report['reviews_overridden']} earlier reviews of a text reviewed again overridden by its last"
                    if report.get("reviews_overridden") else "") +
                   (f"; {report['rows_dropped_as_duplicates']} rows the corrections made the same as one in an "
                    "earlier split dropped" if report.get("rows_dropped_as_duplicates") else ""), err=True)
    else:
        path, hierarchy, report = data.ingest(df, opts["out_root"], name, where=where, overwrite=opts["overwrite"],
                                              meta=meta, split_ratios=opts["split_ratios"], **kw)
    for k in ("rows_invalid", "rows_duplicate", "texts_with_several_paths"):
        if report[k]:
            click.echo(f"note: {k.replace('_', ' ')}: {report[k]}" +
                       (f" (first: {report['invalid_examples'][0]})" if k == "rows_invalid" else ""), err=True)
    click.echo(f"wrote {path}: train/val/test {report['rows_train']}/{report['rows_val']}/{report['rows_test']} "
               f"rows, classes per level {hierarchy.class_counts}" +
               (f", paths of {'/'.join(map(str, report['rows_per_path_length']))} levels"
                if len(report["rows_per_path_length"]) > 1 else ""))
    if opts["track"]:
        import mlflow

        from .data import load_dataset
        from .tracking import log_dataset, start_run
        with start_run(run_name=f"ingest-{name}", nested=mlflow.active_run() is not None):
            mlflow.set_tag("ktt.stage", "ingest")
            log_dataset(load_dataset(path), context="ingest")
            mlflow.log_dict(report, "ingest_report.json")
    return report


def _experiment_of(dataset: str) -> str | None:
    """Runs go to an experiment named after the dataset, unless the environment chose one
    (``MLFLOW_EXPERIMENT_NAME``/``_ID``, or ``mlflow run``'s ``MLFLOW_RUN_ID``)."""
    chosen = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
    return None if any(os.environ.get(k) for k in chosen) else os.path.basename(os.path.normpath(dataset))


@main.command()
@click.argument("source")
@click.option("-n", "--name", required=True, help="Dataset name: written to <out>/<name>/.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl", "parquet", "arrow"]), default=None,
              help="Override the format guessed from the file name.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV/JSON files.")
@click.option("--delimiter", default=None, help="CSV/TSV field delimiter (default: sniffed from the file).")
@click.option("--columns", default=None,
              help="The file has no header row: these comma-separated names, in order, name its columns.")
@click.option("--table", default=None, help="SQL: table to read.")
@click.option("--query", default=None, help="SQL: query to read instead of a table.")
@click.option("--label-table", default=None,
              help="SQL: a table of (id, name, parent_id) classes; the label column then holds leaf ids.")
@click.option("--map", "mapping_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Relabel old paths: a CSV with columns old,new (`A > B`), each row's longest mapped prefix replaced.")
@click.option("--to", "to_dataset", default=None, metavar="DATASET",
              help="With --map: every relabelled path must be one of DATASET's (the new taxonomy).")
@click.option("--append", "parent_name", default=None, metavar="DATASET",
              help="Write NAME as a new version of DATASET with SOURCE's rows (reviewed rows): a text DATASET holds "
                   "takes the new label, a new one joins train; a text reviewed twice takes its last row's label; "
                   "rows with no label yet are left out.")
@_ingest_options
def ingest(source, name, fmt, encoding, delimiter, columns, table, query, label_table, mapping_file, to_dataset,
           parent_name, **opts):
    """Ingest SOURCE into datasets/NAME (train/val/test parquet + hierarchy.json).

    SOURCE is a file (CSV, TSV, JSON, JSONL, Parquet, Arrow, Feather) or an SQLAlchemy URL.
    """
    import time

    from . import data

    start = time.perf_counter()
    if "://" in source:
        df = data.read_sql(source, table=table, query=query)
        where = f"{source} ({table or 'query'})"
        if label_table:
            labels = data.read_sql(source, table=label_table)
            col = opts["label_cols"].split(",")[0].strip()
            if col not in df.columns:
                raise BadValue(f"{where}: no column {col!r}; columns are {list(df.columns)}")
            df = df.assign(**{col: data.paths_from_label_table(df[col], labels)})
    else:
        if table or query or label_table:
            raise BadValue("--table, --query and --label-table are for SQL sources only")
        if "\\t" == delimiter:  # as typed in a shell
            delimiter = "\t"
        names = [c.strip() for c in columns.split(",")] if columns else None
        # a new dataset streams through in chunks; an appended version merges rows in memory
        df = (data.read_file if parent_name else data.read_chunks)(source, fmt, encoding=encoding, sep=delimiter,
                                                                  names=names)
        where = source
    relabel, parent = None, None
    if to_dataset and not mapping_file:
        raise BadValue("--to names the taxonomy a --map relabels into; give --map too")
    if mapping_file:
        from .taxonomy import Relabel, read_mapping
        target = data.load_dataset(to_dataset, opts["out_root"]).hierarchy if to_dataset else None
        relabel = Relabel(read_mapping(mapping_file, opts["label_sep"]), target, os.path.basename(mapping_file))
    if parent_name:
        parent = data.load_dataset(parent_name, opts["out_root"])
        cols = [c.strip() for c in opts["label_cols"].split(",")]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise BadValue(f"{where}: no column {missing[0]!r} (the reviewers' labels); columns are {list(df.columns)}")
        waiting = df[cols].isna().all(axis=1) | (df[cols].astype(str).apply(lambda c: c.str.strip()) == "").all(axis=1)
        if waiting.any():
            click.echo(f"note: {int(waiting.sum())} rows have no label yet (not reviewed): left out", err=True)
        df = df[~waiting.to_numpy()].reset_index(drop=True)
        if not len(df):
            raise BadValue(f"{where}: no reviewed rows (every labels cell is empty)")
    report = _finish_ingest(df, name, where, opts, {}, parent=parent, relabel=relabel)
    click.echo(f"ingested {report['rows_read']:,} rows in {time.perf_counter() - start:.1f} s", err=True)


@main.command()
@click.option("-n", "--name", default="synthetic", show_default=True, help="Dataset name.")
@click.option("--rows", default=3000, show_default=True, type=click.IntRange(min=30), help="Rows to generate.")
@click.option("--noise", default=0.05, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of rows given a sibling's label.")
@click.option("--categories", type=click.IntRange(min=2), default=None,
              help="Generate a random taxonomy of this many categories (inner ones included) instead of the "
                   "small built-in one.")
@click.option("--max-depth", "max_depth", type=click.IntRange(1, 12), default=7, show_default=True,
              help="With --categories: the deepest level of the generated taxonomy (paths of 1 to this many levels).")
@click.option("--taxonomy", "taxonomy_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Category paths from a text file, one `A > B > C` per line (Google's product taxonomy "
                   "format), instead of a generated taxonomy.")
@click.option("--inner", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="With --categories or --taxonomy: share of rows labelled at an inner category.")
@_ingest_options
def generate(name, rows, noise, categories, max_depth, taxonomy_file, inner, **opts):
    """Generate a synthetic product-title dataset (no third-party data) into datasets/NAME.

    By default a 3-level catalog of 27 leaves; with --categories (or --taxonomy) a catalog shaped
    like a real taxonomy: thousands of categories, paths of 1 to --max-depth levels, rows at leaves
    and at inner categories.
    """
    import time
    from pathlib import Path

    from . import synth

    start = time.perf_counter()
    if categories and taxonomy_file:
        raise BadValue("give --categories or --taxonomy, not both")
    if categories or taxonomy_file:
        tax = synth.read_taxonomy(taxonomy_file) if taxonomy_file else \
            synth.random_taxonomy(categories, max_depth, opts["seed"])
        df = synth.generate_catalog(rows, tax, opts["seed"], noise, inner)  # chunks: ingested as they come
        where = (f"ktt.synth.generate_catalog(rows={rows}, " +
                 (f"taxonomy={Path(taxonomy_file).name!r}" if taxonomy_file else
                  f"categories={categories}, max_depth={max_depth}") + f", inner={inner}, seed={opts['seed']})")
    else:
        df, where = synth.generate(rows, opts["seed"], noise), f"ktt.synth(rows={rows}, seed={opts['seed']})"
    _finish_ingest(df, name, where, opts, {"synthetic": True})
    click.echo(f"generated and ingested {rows:,} rows in {time.perf_counter() - start:.1f} s", err=True)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.argument("dataset")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a hyperparameter from hyperparameters.json (repeatable).")
@click.option("--params", "params_str", default="", help="Several overrides in one string: 'a=1 b=2'.")
@click.option("-r", "--reference", is_flag=True, help="Also write the reference set for drift monitoring.")
@click.option("--resume", default=None, metavar="CHECKPOINT|RUN",
              help="Continue from a last_ checkpoint file or the last_ checkpoint of an MLflow run.")
@click.option("--from", "start_from", default=None, metavar="RUN",
              help="Update the same model trained in RUN (a run ID, runs:/ or models:/ URI) on an earlier taxonomy "
                   "of DATASET instead of training from scratch: what is unchanged keeps its weights.")
@click.option("--experiment", default=None, help="MLflow experiment name (default: the dataset's name).")
@click.option("--run-name", default=None, help="MLflow run name.")
@click.option("--seeds", default=None, metavar="0,1,2", help="Fit once per seed, each a nested run under one run "
              "that logs every metric's mean and standard deviation.")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train on this many processes of this machine (torchrun, DistributedDataParallel: gloo on "
                   "CPUs, nccl with one GPU per process); batch_size stays the global batch.")
@click.option("--spark", "spark_master", default=None, metavar="MASTER",
              help="Run the per-node fits of a TF-IDF model as Spark tasks on MASTER (local[4], spark://host:7077, "
                   "yarn) through joblib's Spark backend.")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS",
              help="Datasets folder (env KTT_DATASETS).")
@click.option("--weights", "weights_root", default="weights", show_default=True, envvar="KTT_WEIGHTS",
              help="Checkpoint folder (env KTT_WEIGHTS).")
@click.pass_context
def train(ctx, model, dataset, params, params_str, reference, resume, start_from, experiment, run_name, seeds, nproc,
          spark_master, datasets_root, weights_root):
    """Train MODEL on DATASET, tracked in MLflow.

    Any other `--name value` pair is a hyperparameter override, so `mlflow run . -P alpha=0.001`
    works as well as `ktt train tfidf_hsgd synthetic -p alpha=0.001`.
    """
    from . import hparams
    from .train import train as run_train

    extra = list(ctx.args)
    pairs = list(params) + params_str.split()
    while extra:
        key = extra.pop(0)
        if not key.startswith("--") or not extra:
            raise BadValue(f"unexpected argument {key!r}; hyperparameters go as --name value or -p name=value")
        pairs.append(f"{key[2:].replace('-', '_')}={extra.pop(0)}")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(_launch(nproc, model, dataset, hparams.parse_overrides(pairs), datasets_root))
    if spark_master:
        from . import registry

        if not registry.get(model).joblib_fit:
            raise BadValue(f"model {model!r} does not fit through joblib, so not on Spark; leave out --spark "
                           "(encoder models: --nproc)")
    from .distributed import spark_backend

    kw = dict(overrides=hparams.parse_overrides(pairs), datasets_root=datasets_root, weights_root=weights_root,
              run_name=run_name, reference=reference)
    with spark_backend(spark_master):
        if seeds:
            from .experiment import check_seeds
            from .tracking import set_experiment
            from .train import train_seeds
            if resume or nproc > 1 or start_from:
                raise BadValue("--seeds trains from scratch in one process: leave out --resume, --from and --nproc")
            if experiment or _experiment_of(dataset):
                set_experiment(experiment or _experiment_of(dataset))
            fit = train_seeds(model, dataset, check_seeds(seeds, "--seeds"), **kw)
        else:
            fit = run_train(model, dataset, experiment=experiment or _experiment_of(dataset), resume=resume,
                            start_from=start_from, **kw)
    if fit.run_id is None:  # a torchrun process other than rank 0: rank 0 reports
        return
    m, sd = fit.metrics, (lambda k: f" ± {fit.metrics[k + '_sd']:.4f}" if fit.runs else "")
    click.echo(f"MLflow run {fit.run_id}: test leaf accuracy {m['test_leaf_accuracy']:.4f}{sd('test_leaf_accuracy')}, "
               f"hierarchical F1 {m['test_h_f1']:.4f}{sd('test_h_f1')}, violation rate {m['test_violation_rate']:.4f}"
               + (f" (mean ± sd over {len(fit.runs)} seeds)" if fit.runs else ""))


def _launch(nproc: int, model: str, dataset: str, overrides: dict, datasets_root: str) -> int:
    """This very command again on ``nproc`` processes (``distributed.relaunch``), once what can
    be checked here is."""
    from . import registry
    from .data import load_dataset
    from .distributed import relaunch
    from .tracking import check_tracking_uri

    if not registry.get(model).distributable:
        raise BadValue(f"model {model!r} does not train on several processes; leave out --nproc")
    registry.params(model, overrides)
    load_dataset(dataset, datasets_root)
    check_tracking_uri()
    return relaunch(nproc, sys.argv[1:])


@main.command()
@click.argument("model")
@click.argument("dataset")
@click.option("--n-trials", default=20, show_default=True, type=click.IntRange(min=1), help="Trials to add to the study.")
@click.option("--timeout", default=None, type=float, help="Stop starting trials after this many seconds (0: no limit).")
@click.option("--storage", default=None, help="Optuna storage: a journal file path (default tuning/<study>.journal) "
              "or an SQLAlchemy URL such as postgresql://... (shared by workers on many machines).")
@click.option("--study-name", default=None, help="Default: <model>-<dataset>. An existing study is resumed.")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Local worker processes.")
@click.option("--metric", default="best_val_h_f1", show_default=True,
              help="Metric to maximise: best_val_<name>, the selected checkpoint's validation score.")
@click.option("--seed", default=0, show_default=True)
@click.option("--heartbeat", default=60, show_default=True, type=click.IntRange(min=1),
              help="RDB storage: seconds between a running trial's heartbeats; a trial silent for two is "
                   "failed and queued again (its worker died).")
@click.option("--write-back", is_flag=True, help="Write the best params into hyperparameters.json.")
@click.option("--experiment", default=None, help="MLflow experiment name (default: the dataset's name).")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS")
@click.option("--weights", "weights_root", default="weights", show_default=True, envvar="KTT_WEIGHTS")
def tune(model, dataset, write_back, **kw):
    """Tune MODEL on DATASET with Optuna; every trial is a nested MLflow run."""
    from .tune import Sweep, run_sweep, write_back as do_write_back

    kw["experiment"] = kw.get("experiment") or _experiment_of(dataset)
    study = run_sweep(Sweep(model, dataset, **kw))
    best = study.best_trial
    click.echo(f"study {study.study_name}: {len(study.trials)} trials, best #{best.number} "
               f"{kw['metric']}={best.value:.4f} {best.params}")
    if write_back:
        click.echo(f"wrote best params to {do_write_back(study, model)}")


@main.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(min=100), help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, help="Seed of the resampling.")
@click.option("--resample", type=click.Choice(["texts", "seeds-and-texts"]), default="texts", show_default=True,
              help="texts: the test texts, the same draw for every seed of both sides (the interval carries "
                   "test-set variance); seeds-and-texts: each side's seeds first, then the texts (training "
                   "variance too).")
def compare(run_a, run_b, n_boot, seed, resample):
    """Is RUN_B better than RUN_A, or luck? A paired bootstrap 95% interval of the difference in
    hierarchical F1 and leaf accuracy over the same test texts, logged as an MLflow run. Several
    seeds: comma-separated run IDs on each side, the same number on each; a side's metric pools
    its seeds, and a resample draws each text once for all of them (a text's rows under k seeds
    are not k texts)."""
    from .tracking import check_tracking_uri, compare_runs

    check_tracking_uri()
    a, b = [r.strip() for r in run_a.split(",") if r.strip()], [r.strip() for r in run_b.split(",") if r.strip()]
    result = compare_runs(a, b, n_boot=n_boot, seed=seed, resample=resample)
    how = ("test texts resampled, the same draw for every seed of both sides" if resample == "texts" else
           "each side's seeds resampled, then the test texts, the same text draw for every seed of both sides")
    click.echo(f"B - A over {n_boot} resamples ({how}; MLflow run {result['run_id']}):")
    for m in ("h_f1", "leaf_accuracy"):
        r = result[m]
        click.echo(f"  {m}: A {r['a']:.4f}, B {r['b']:.4f}, difference {r['diff']:+.4f}, 95% interval "
                   f"[{r['low']:+.4f}, {r['high']:+.4f}]: " + ("significant" if r["significant"] else "not significant"))


@main.command("discover")
@click.argument("model_uri")
@click.argument("input_file", metavar="TITLES")
@click.argument("output_file", metavar="OUTPUT")
@click.option("--text-col", default="text", show_default=True, help="The input column holding the titles.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="A title stops above its leaf when a level's confidence is below this (default: the model's).")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Stop at the threshold that reached this hierarchical precision on validation (instead of --threshold).")
@click.option("--min-size", default=3, show_default=True, type=click.IntRange(min=2),
              help="The fewest titles a proposed category holds (raise it with more traffic).")
@click.option("--distance", default=0.85, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="How far apart (cosine distance of their words, average linkage) titles of one proposal may be.")
def discover(model_uri, input_file, output_file, text_col, threshold, target_precision, min_size, distance):
    """Propose categories the taxonomy lacks: the titles of TITLES whose answer stops above its leaf,
    clustered by their words under the class where they stop. OUTPUT (.csv, .tsv or .parquet) lists each
    proposal's parent, a name from its distinctive terms, its size and example titles, for a team to review
    and add with `ktt taxonomy add`."""
    from .batch import discover_file

    n = discover_file(model_uri, input_file, output_file, text_col=text_col, threshold=threshold,
                      target_precision=target_precision, min_size=min_size, distance=distance)
    click.echo(f"wrote {output_file}: {n} proposed categories")


@main.command("figures")
@click.argument("run")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS",
              help="Datasets folder (env KTT_DATASETS).")
def figures_cmd(run, datasets_root):
    """Draw RUN's test figures (levels, confusions, stopping curve, reliability) and log them under
    its figures/: what `ktt train` draws, for a sweep's trials (`ktt tune` draws its best trial's)."""
    from .figures import for_run

    click.echo(f"logged the figures of run {for_run(run, datasets_root)}")


@main.command("predict")
@click.argument("model_uri")
@click.argument("input_file", metavar="INPUT")
@click.argument("output_file", metavar="OUTPUT")
@click.option("--text-col", default="text", show_default=True, help="The input column holding the texts.")
@click.option("--rows", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Rows read, scored and written at a time (memory stays bounded by this).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Stop each answer at its deepest level whose confidence clears this (default: the model's).")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Stop at the threshold that reached this hierarchical precision on validation (instead of --threshold).")
@click.option("--review", "review_file", default=None, metavar="FILE",
              help="Append the rows whose answer stopped above its path's end to FILE (.csv or .jsonl) for review; "
                   "fill its labels column and bring it back with `ktt ingest FILE --append DATASET`.")
def predict(model_uri, input_file, output_file, text_col, rows, threshold, target_precision, review_file):
    """Score a CSV/TSV/Parquet file with a logged model (models:/NAME@ALIAS, runs:/ID/model, ...):
    OUTPUT holds INPUT's columns plus path, L<d>, L<d>_confidence and review."""
    from .batch import predict_file

    if review_file and not review_file.lower().endswith((".csv", ".jsonl")):
        raise BadValue(f"--review {review_file}: use a .csv or .jsonl file")
    n = predict_file(model_uri, input_file, output_file, text_col=text_col, rows=rows, threshold=threshold,
                     target_precision=target_precision, review=review_file)
    click.echo(f"wrote {output_file}: {n} rows" + (f"; answers to review appended to {review_file}"
                                                     if review_file else ""))


@main.command("audit")
@click.argument("model")
@click.argument("dataset")
@click.argument("output_file", metavar="OUTPUT")
@click.option("--folds", default=2, show_default=True, type=click.IntRange(min=2),
              help="Deal the rows into this many parts; each part is scored by MODEL fitted on the others.")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a hyperparameter from hyperparameters.json (repeatable).")
@click.option("--seed", default=0, show_default=True, help="Seed of the parts and the fits.")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS",
              help="Datasets folder (env KTT_DATASETS).")
def audit(model, dataset, output_file, folds, params, seed, datasets_root):
    """Label audit: write every row of DATASET to OUTPUT (.csv or .jsonl), the lowest probability
    of its own label first, as MODEL fitted without the row gives it (cross-fitting): text, split,
    label, label_probability, guess, guess_probability and an empty labels column; correct the
    wrong labels there and bring them back with `ktt ingest OUTPUT --append DATASET`."""
    from . import registry
    from .data import load_dataset
    from .hparams import parse_overrides
    from .review import audit as audit_rows

    if not output_file.lower().endswith((".csv", ".jsonl")):
        raise BadValue(f"{output_file}: use a .csv or .jsonl file")
    ds = load_dataset(dataset, datasets_root)
    overrides = {"seed": seed, **parse_overrides(params)}
    table = audit_rows(lambda h: registry.create(model, h, **overrides),
                       {s: getattr(ds, s) for s in ("train", "val", "test") if len(getattr(ds, s))}, folds=folds, seed=seed)
    if output_file.lower().endswith(".csv"):
        from .text import spreadsheet_safe

        spreadsheet_safe(table).to_csv(output_file, index=False)
    else:
        table.to_json(output_file, orient="records", lines=True, force_ascii=False)
    low = table["label_probability"]
    click.echo(f"wrote {output_file}: {len(table)} rows, the least believed label first ({int((low < 0.5).sum())} "
               f"below 0.5, {int((table['label'] != table['guess']).sum())} where {folds}-fold {model} guesses "
               "another path)")


@main.command("export")
@click.argument("source", required=False)
@click.option("--model", default=None, help="With --dataset instead of SOURCE: the newest best_ checkpoint in weights/.")
@click.option("--dataset", default=None)
@click.option("--onnx/--no-onnx", default=True, show_default=True,
              help="Write encoder.onnx and classifier.onnx (TF-IDF models: tfidf.npz).")
@click.option("--bento", is_flag=True, help="Build the BentoService in build/<model>_<dataset>/inference.")
@click.option("--monitoring", is_flag=True,
              help="Also build the drift sidecar, Prometheus, Grafana and docker-compose (implies --bento).")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS")
@click.option("--register", "register_as", default=None, metavar="NAME",
              help="Register the run's model as NAME and point --alias at the new version.")
@click.option("--alias", default="champion", show_default=True)
@click.option("--allow-taxonomy-change", is_flag=True,
              help="With --register: move the alias even when the new version answers in another taxonomy than the "
                   "version holding it (the diff is printed either way).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write dynamically quantized graphs (onnx-int8/), compare them with the float ones "
                   "on the test split, and serve them.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="With --quantize: refuse when int8 loses more than this many points of test hF1.")
@click.option("--build", "build_root", default="build", show_default=True, envvar="KTT_BUILD")
@click.option("--weights", "weights_root", default="weights", show_default=True, envvar="KTT_WEIGHTS")
def export_cmd(source, **kw):
    """Export SOURCE (a run ID, runs:/<id>, models:/<name>@<alias> or models:/<name>/<version>).

    Builds ONNX graphs and, with --bento, a BentoML 0.13.1 service under build/<model>_<dataset>/.
    """
    from .export import export

    built = export(source, **kw)
    for k, v in built.items():
        click.echo(f"{k}: {json.dumps(v) if isinstance(v, dict) else v}")


@main.command("serve")
@click.argument("build", type=click.Path(exists=True, file_okay=False))
@click.option("--port", "inference_port", default=5000, show_default=True, help="Inference service port.")
@click.option("--monitoring-port", default=5001, show_default=True, help="Drift sidecar port.")
@click.option("--prometheus-port", default=9090, show_default=True)
@click.option("--no-prometheus", is_flag=True, help="Do not start Prometheus even if it is installed.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Inference workers.")
@click.option("--drift-period", type=float, default=None, help="Seconds between drift checks (overrides evidently.yaml).")
def serve(build, no_prometheus, **kw):
    """Run BUILD (build/<model>_<dataset>, made by `ktt export --monitoring`) natively until Ctrl-C."""
    from .monitoring.stack import Stack

    stack = Stack(build, prometheus=None if no_prometheus else "auto", **kw)
    urls = stack.start()
    for name, url in urls.items():
        click.echo(f"{name:<11} {url}")
    if not stack.prometheus:
        click.echo("prometheus  not installed: metrics are on each service's /metrics")
    click.echo("Ctrl-C stops everything.")
    stack.run_forever()


@main.command("experiment")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--datasets", "datasets_root", default=None, help="Where to write the experiment's dataset "
              "(default: a temporary folder).")
@click.option("--weights", "weights_root", default="weights", show_default=True, envvar="KTT_WEIGHTS")
@click.option("--seeds", default=None, help="Comma-separated seeds, each model fitted once per seed (default: the "
              "file's seeds, else its seed).")
def experiment(file, **kw):
    """Run the model comparison described in FILE (experiments/<name>.yaml) as one MLflow experiment."""
    from .experiment import load_spec, ranking_table, run_experiment

    parent, rows = run_experiment(file, **kw)
    click.echo(ranking_table(rows, load_spec(file)["rank_by"]))
    click.echo(f"parent run {parent}: ranking.md and ranking.png are its artifacts")


@main.group("taxonomy")
def taxonomy_group():
    """Taxonomy versions: what changed between two datasets, runs or registered models; new categories."""


@taxonomy_group.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS")
def taxonomy_diff(old, new, as_json, datasets_root):
    """Categories added, removed, renamed (same rows, new name) and moved from OLD to NEW, and the
    rows each touches. OLD and NEW: a dataset, a run ID (runs:/ID) or models:/NAME@ALIAS."""
    from .export import taxonomy_side
    from .taxonomy import diff

    d = diff(taxonomy_side(old, datasets_root), taxonomy_side(new, datasets_root))
    click.echo(json.dumps(d.to_dict(), indent=1) if as_json else str(d))


@taxonomy_group.command("add")
@click.argument("dataset")
@click.argument("categories", nargs=-1, required=True)
@click.option("-n", "--name", required=True, help="The new dataset: DATASET's rows, its taxonomy plus CATEGORIES.")
@click.option("--describe", multiple=True, metavar="TEXT",
              help="Words that describe a category beyond its name (synonyms, typical titles' words); the first "
                   "--describe goes with the first category, and so on.")
@click.option("--label-sep", default=">", show_default=True, help="Separator inside a category path.")
@click.option("--overwrite", is_flag=True, help="Replace dataset NAME if it exists.")
@click.option("--datasets", "datasets_root", default="datasets", show_default=True, envvar="KTT_DATASETS")
def taxonomy_add(dataset, categories, name, describe, label_sep, overwrite, datasets_root):
    """Write dataset NAME: DATASET with CATEGORIES ("Dept > Category > New leaf") added to its
    taxonomy before any row is labelled with them. `ktt train MODEL NAME --from RUN` then answers
    them from their names and descriptions; reviewed rows (`ktt ingest --append`) improve them."""
    from . import data

    parent = data.load_dataset(dataset, datasets_root)
    path, h = data.add_classes(parent, categories, datasets_root, name, descriptions=describe, label_sep=label_sep,
                               overwrite=overwrite)
    click.echo(f"wrote {path}: {len(categories)} categories added, {h.n_leaves} leaves in all")


@main.command("models")
def list_models():
    """List the registered models."""
    from . import registry

    for name in registry.available():
        click.echo(name)


if __name__ == "__main__":
    main()
