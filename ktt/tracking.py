"""Everything a fit logs to MLflow, and checkpoints mirrored to ``weights/<model>/<dataset>/``."""
from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
from pathlib import Path

import mlflow
import numpy as np

from .errors import BadValue, NotFound, Unavailable

log = logging.getLogger(__name__)

KINDS = ("best", "last")
SUFFIX = ".pt"  # every checkpoint file, whatever its model writes into it: best_<time>.pt, last_<time>.pt
# ISO 8601 basic format: no ':', which Windows and some artifact stores cannot write
TIME_FORMAT = "%Y%m%dT%H%M%S"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename into ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # not mkstemp: its 0600 mode would outlive the rename; 0666 here is cut by the umask
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _claim(folder: Path, kind: str, ext: str) -> tuple[Path, Path]:
    """Reserve ``<kind>_<ISO time, basic format><ext>`` exclusively (two runs in one second get distinct names).

    Returns the reserved name and a temp file beside it to write into.
    """
    t = dt.datetime.now().replace(microsecond=0)
    while True:
        final = folder / f"{kind}_{t.strftime(TIME_FORMAT)}{ext}"
        try:
            # O_EXCL on a placeholder: the name is ours even before the checkpoint is written.
            os.close(os.open(folder / f".{final.name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            if not final.exists():
                return final, folder / f".{final.name}.claim"
            os.unlink(folder / f".{final.name}.claim")
        except FileExistsError:
            pass
        t += dt.timedelta(seconds=1)


class RunLogger:
    """The :class:`ktt.model.FitLogger` of a tracked fit.

    Checkpoints are written atomically (temp file, fsync, rename) under
    ``weights/<model>/<dataset>/``; each run keeps one ``best_`` and one ``last_`` file.
    """

    def __init__(self, model_name: str, dataset_name: str, weights_root: str | os.PathLike = "weights",
                 callbacks=()):
        self.folder = Path(weights_root) / model_name / dataset_name
        self.callbacks = list(callbacks)  # each called as cb(metrics, step), e.g. to report to Optuna
        self.paths: dict[str, Path] = {}
        self.model_id: str | None = None  # the logged model metrics from now on belong to (MLflow 3)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".write-test-"):
                pass
        except OSError as e:
            raise Unavailable(f"cannot write checkpoints to {self.folder}: {e.strerror}") from None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if clean:
            mlflow.log_metrics(clean, step=step, model_id=self.model_id)
        for cb in self.callbacks:
            cb(clean, step)

    def checkpoint(self, model, kind: str, state: dict | None = None) -> Path:
        if kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}, not {kind!r}")
        final, claim = _claim(self.folder, kind, SUFFIX)
        try:
            atomic_write(final, lambda tmp: model.save(tmp, state=state))
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
            free = shutil.disk_usage(self.folder).free / 1e9
            raise Unavailable(f"cannot write checkpoint {final}: {why} ({free:.1f} GB free there); "
                               f"the previous {kind} checkpoint is intact") from None
        finally:
            claim.unlink(missing_ok=True)
        old = self.paths.get(kind)
        self.paths[kind] = final
        if mlflow.active_run():  # lets `--resume runs:/<id>` find it even if this process dies
            mlflow.set_tag(f"ktt.checkpoint.{kind}", str(final.resolve()))
        if old is not None and old != final:
            old.unlink(missing_ok=True)
        return final

    def log_checkpoints(self) -> None:
        for p in self.paths.values():
            mlflow.log_artifact(str(p), artifact_path="checkpoints")


def checkpoint_time(path: Path) -> dt.datetime:
    """When a ``best_``/``last_`` checkpoint was named: the basic format, or the extended one
    (``2026-11-27T22:55:44``) that earlier versions wrote."""
    stamp = Path(path).stem.partition("_")[2]
    for fmt, width in ((TIME_FORMAT, 15), ("%Y-%m-%dT%H:%M:%S", 19)):
        try:
            return dt.datetime.strptime(stamp[:width], fmt)
        except ValueError:
            continue
    raise BadValue(f"{Path(path).name}: not a best_/last_<time> checkpoint name")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)  # once per process: a sweep's trials share it
def environment() -> tuple[dict[str, str], str]:
    """What a run ran on: tags (``ktt.env_hash``: a hash of every installed package and version;
    CPU, GPU, Python, thread settings) and the package list (``name==version`` lines) they hash.
    Two runs with the same hash ran on the same software."""
    import hashlib
    import importlib.metadata as md
    import platform

    from . import threads

    packages = "\n".join(sorted({f"{d.metadata['Name']}=={d.version}" for d in md.distributions()
                                  if d.metadata["Name"]}, key=str.lower)) + "\n"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    torch = sys.modules.get("torch")  # loaded by encoder fits; a TF-IDF fit never pays its import for this
    gpu = torch.cuda.get_device_name(0) if torch and torch.cuda.is_available() else "none"
    torch_threads = str(torch.get_num_threads()) if torch else "n/a"
    tags = {"ktt.env_hash": hashlib.sha256(packages.encode()).hexdigest()[:16], "ktt.cpu": cpu, "ktt.gpu": gpu,
            "ktt.python": platform.python_version(), "ktt.cpu_count": str(os.cpu_count()),
            "ktt.threads": str(threads.configured() or "default"), "ktt.torch_threads": torch_threads}
    return tags, packages


def check_tracking_uri() -> str:
    """Fail at start, not after training: a tracking server that is unreachable, is not an
    MLflow server, or refuses the login in ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return uri
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"MLflow tracking server {uri} is unreachable ({e}); "
                           "start it or set MLFLOW_TRACKING_URI") from None
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as e:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if e.error_code == "UNAUTHENTICATED":
            raise Unavailable(f"MLflow tracking server {uri} refused the login of user {user!r}: check "
                               "MLFLOW_TRACKING_PASSWORD" if user else
                               f"MLflow tracking server {uri} needs a login: set MLFLOW_TRACKING_USERNAME "
                               "and MLFLOW_TRACKING_PASSWORD") from None
        raise Unavailable(f"{uri} does not answer as an MLflow tracking server "
                           f"({e.error_code}: {str(e.message).splitlines()[0][:200]})") from None
    return uri


def start_run(**kwargs):
    """``mlflow.start_run``, with the two ways a shared server refuses it made plain before any work:
    a user without permission to write to the experiment, and a server that would have this
    client write artifacts (checkpoints) to its own disk instead of uploading them."""
    uri = mlflow.get_tracking_uri()
    try:
        active = mlflow.start_run(**kwargs)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        exp_id = kwargs.get("experiment_id") or os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"
        try:
            name = mlflow.get_experiment(exp_id).name
        except mlflow.exceptions.MlflowException:  # not even readable
            name = f"#{exp_id}"
        raise Unavailable(f"MLflow tracking server {uri}: user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} "
                          f"may not write to experiment {name!r}; ask its owner for EDIT permission, "
                          "or choose another experiment (--experiment)") from None
    where = active.info.artifact_uri
    if uri.startswith(("http://", "https://")) and urllib.parse.urlparse(where).scheme in ("", "file"):
        mlflow.end_run("FAILED")
        raise Unavailable(f"MLflow tracking server {uri} stores artifacts at {where}, a folder that this "
                          "machine would write to its own disk: start the server with --serve-artifacts "
                          "(or a shared artifact store) so checkpoints are uploaded to it")
    return active


def log_dataset(ds, context: str = "training") -> None:
    """Log an intermediate dataset as an MLflow dataset input, with its row counts and hash."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(ds.path).resolve()))
    schema = Schema([ColSpec("string", "text"), ColSpec("string", "labels")])
    dataset = MetaDataset(source, name=ds.name, digest=ds.digest, schema=schema)
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as e:
        # MLflow's SQL store inserts a new dataset row after checking it is absent: two runs logging
        # the same dataset at once (tuning workers, parallel trainings) race to a unique-key error
        # (SQLite: "UNIQUE constraint failed", PostgreSQL through a server: "violates unique constraint").
        # The row exists by now, so a second try links to it.
        if "unique constraint" not in str(e).lower() and "IntegrityError" not in str(e):
            raise
        mlflow.log_input(dataset, context=context)
    mlflow.log_params({"dataset": ds.name, "dataset_digest": ds.digest,
                       **{f"rows_{s}": n for s, n in ds.manifest.get("rows", {}).items()}})


def log_dict(d: dict, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(d, indent=1, default=str), artifact_file)


def log_table(df, artifact_file: str) -> None:
    """A DataFrame in the file format of ``mlflow.log_table`` (``{"columns", "data"}``), in one
    upload: ``mlflow.log_table`` also lists, re-reads and re-tags the run, seven requests to a
    tracking server per table (it keeps a tag for the UI's table comparison, which KTT does not use)."""
    mlflow.log_text(df.to_json(orient="split", index=False, date_format="iso"), artifact_file)


def run_artifact(run_id: str, folder: str, name_matches) -> Path | None:
    """The first artifact under ``folder`` of run ``run_id`` whose file name ``name_matches``,
    downloaded (a local path as it is); ``None`` when there is none."""
    client = mlflow.MlflowClient()
    for art in client.list_artifacts(run_id, folder):
        if name_matches(Path(art.path).name):
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=art.path))
    return None


def resolve_checkpoint(source: str, kind: str = "last") -> Path:
    """A checkpoint path, or the ``kind`` checkpoint of an MLflow run (``runs:/<id>`` or a bare run ID)."""
    if Path(source).is_file():
        return Path(source)
    run_id = source[len("runs:/"):].strip("/").split("/")[0] if source.startswith("runs:/") else source
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:
        raise NotFound(f"{source!r} is neither a checkpoint file nor an MLflow run") from None
    found = run_artifact(run_id, "checkpoints", lambda n: n.startswith(f"{kind}_") and n.endswith(SUFFIX))
    if found:
        return found
    local = run.data.tags.get(f"ktt.checkpoint.{kind}")  # a run killed before it logged artifacts
    if local and Path(local).is_file():
        log.warning("MLflow run %s has no uploaded %s checkpoint (killed before the end?); using the file it "
                    "wrote on this machine, %s", run_id, kind, local)
        return Path(local)
    raise NotFound(f"MLflow run {run_id} has no {kind}_ checkpoint")


TEST_ROWS = "metrics/test_rows.parquet"  # per test row: what hF1 and leaf accuracy pool (ktt.compare)


def log_test_rows(counts: dict, true_leaf) -> None:
    """A run's per-row counts on the test split (``metrics.row_counts``) and the true leaf of each
    row (two runs are compared only on the same rows)."""
    import pyarrow as pa

    log_parquet(pa.table({**counts, "true_leaf": np.asarray(true_leaf)}), TEST_ROWS)


def log_parquet(table, artifact_file: str) -> None:
    """A pyarrow table as a Parquet run artifact (one upload)."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        pq.write_table(table, path)
        parent = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)


def load_test_rows(run_id: str) -> dict:
    """What :func:`log_test_rows` logged for ``run_id``; NotFound for a run without it."""
    import pandas as pd

    try:
        path = run_artifact(run_id, str(Path(TEST_ROWS).parent), lambda n: n == Path(TEST_ROWS).name)
    except Exception as e:  # MLflow raises several types for an unknown run
        raise NotFound(f"no MLflow run {run_id!r} ({str(e).splitlines()[0]})") from None
    if path is None:
        raise NotFound(f"run {run_id} logged no {TEST_ROWS} (runs trained before it was logged cannot be compared)")
    return {k: v.to_numpy() for k, v in pd.read_parquet(path).items()}


def bootstrap_runs(a: list[str], b: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """:func:`ktt.compare.paired_bootstrap` of runs ``b`` against runs ``a`` from their logged test
    rows (several runs on a side: seeds, paired in order, their rows pooled); ``BadValue`` when a
    pair was not evaluated on the same test rows."""
    from .compare import paired_bootstrap, stack

    if len(a) != len(b):
        raise BadValue(f"{len(a)} runs against {len(b)}: give each side the same seeds, in the same order")
    sides = [[load_test_rows(r) for r in runs] for runs in (a, b)]
    for ra, rb, ia, ib in zip(*sides, a, b):
        if len(ra["true_leaf"]) != len(rb["true_leaf"]) or (ra["true_leaf"] != rb["true_leaf"]).any():
            raise BadValue(f"runs {ia} and {ib} were evaluated on different test rows")
    keys = ("shared", "predicted", "true", "leaf_right")
    return paired_bootstrap(*(stack([{k: r[k] for k in keys} for r in side]) for side in sides), n_boot, seed)


def compare_runs(a: list[str], b: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """:func:`bootstrap_runs`, logged as a run of its own (``ktt.stage`` compare) in the experiment
    of ``a``'s first run; returns the numbers and that run's ID."""
    result = bootstrap_runs(a, b, n_boot, seed)
    experiment_id = mlflow.MlflowClient().get_run(a[0]).info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name="compare", nested=mlflow.active_run() is not None,
                          tags={"ktt.stage": "compare", "ktt.compare.a": ",".join(a), "ktt.compare.b": ",".join(b)}):
        mlflow.log_params({"n_boot": n_boot, "seed": seed, "runs_per_side": len(a)})
        mlflow.log_metrics({f"{m}_{k}": float(v) for m, r in result.items() for k, v in r.items()})
        log_dict(result, "compare.json")
        run_id = mlflow.active_run().info.run_id
    return {"run_id": run_id, **result}
