"""Everything a fit logs to MLflow, and checkpoints mirrored to ``weights/<model>/<dataset>/``."""
from __future__ import annotations

import contextlib
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
import threading
import time
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
            log_batch(clean, step=step, model_id=self.model_id)
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
            log_batch(tags={f"ktt.checkpoint.{kind}": str(final.resolve())})
        if old is not None and old != final:
            old.unlink(missing_ok=True)
        return final

    def log_checkpoints(self) -> None:
        for p in self.paths.values():
            log_path(p, "checkpoints")


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


@functools.lru_cache(maxsize=1)  # once per process
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
    CPU, GPU, Python, thread and allocator settings) and the package list (``name==version`` lines) they hash.
    Two runs with the same hash ran on the same software."""
    import hashlib
    import importlib.metadata as md
    import platform

    from . import allocator, threads

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
            "ktt.threads": str(threads.configured() or "default"), "ktt.torch_threads": torch_threads,
            "ktt.malloc": allocator.configure()}
    return tags, packages


def check_tracking_uri() -> str:
    """Fail at start, not after training: a tracking server that is unreachable, is not an
    MLflow server, or refuses the login in ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` (asked
    once per server and user in a process: a sweep's fits share the answer)."""
    import urllib.error
    import urllib.request

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return uri
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"MLflow tracking server {uri} is unreachable ({e}); "
                           "start it or set MLFLOW_TRACKING_URI") from None
    _check_login(uri, os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    return uri


@functools.lru_cache(maxsize=8)  # successes only: a refusal raises, and is asked again next time
def _check_login(uri: str, user: str | None, password: str | None) -> None:
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code == "UNAUTHENTICATED":
            raise Unavailable(f"MLflow tracking server {uri} refused the login of user {user!r}: check "
                               "MLFLOW_TRACKING_PASSWORD" if user else
                               f"MLflow tracking server {uri} needs a login: set MLFLOW_TRACKING_USERNAME "
                               "and MLFLOW_TRACKING_PASSWORD") from None
        raise Unavailable(f"{uri} does not answer as an MLflow tracking server "
                           f"({e.error_code}: {str(e.message).splitlines()[0][:200]})") from None


def set_experiment(name: str):
    """``mlflow.set_experiment(name)``, made active also when another process creates it at the same
    moment (tuning workers starting together): MLflow 3.17 then returns it without making it
    active, and the runs would go to the Default experiment."""
    exp = mlflow.set_experiment(name)
    if getattr(mlflow.tracking.fluent, "_active_experiment_id", None) != exp.experiment_id:
        exp = mlflow.set_experiment(experiment_id=exp.experiment_id)
    return exp


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
    return _ActiveRun(active)


class _ActiveRun(mlflow.ActiveRun):
    """MLflow's, but at its end the run's link is printed from what is known: MLflow reads the
    whole run back from the server to print it (every metric, param and tag: the heaviest request
    of a fit, and the last before the run ends)."""

    def __exit__(self, *exc):
        from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT as QUIET

        top = mlflow.active_run()
        ends = top is not None and top.info.run_id == self.info.run_id  # else MLflow leaves it, silently
        quiet, was = QUIET.get() or not ends, os.environ.get(QUIET.name)
        os.environ[QUIET.name] = "true"
        try:
            done = super().__exit__(*exc)
        finally:
            if was is None:
                os.environ.pop(QUIET.name, None)
            else:
                os.environ[QUIET.name] = was
        uri = mlflow.get_tracking_uri().rstrip("/")
        if not quiet and uri.startswith(("http://", "https://")):  # where MLflow prints it
            exp = f"{uri}/#/experiments/{self.info.experiment_id}"
            sys.stdout.write(f"🏃 View run {self.info.run_name} at: {exp}/runs/{self.info.run_id}\n"
                             f"🧪 View experiment at: {exp}\n")
        return done


def remotely(fn):
    """``fn`` (module-level, its arguments picklable) runs in this process's tracking worker
    (:mod:`ktt.worker`) when called inside :func:`uploading` from the process's second fit on,
    here otherwise. A sweep's MLflow client work (SQLite writes, requests, the logged model) then
    leaves the fit's process: on its threads it held the interpreter lock the fit needs."""
    @functools.wraps(fn)
    def run(*args):
        if _background is None or _worker is None or not _worker.alive or _no_worker():  # also: in the worker
            return fn(*args)
        return _worker.call(_as_caller, mlflow.get_tracking_uri(), _cwd(), dict(os.environ),
                            fn.__module__, fn.__qualname__, args)
    return run


def _no_worker() -> bool:
    return os.environ.get("KTT_TRACKING_WORKER", "1") == "0"


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed since: only absolute paths work, here and there
        return None


def _as_caller(uri: str, cwd: str, env: dict, module: str, name: str, args):
    """In the worker: ``module.name(*args)`` (sent by name: pickle would refuse a decorated
    function as ``fn``, and ``remotely`` of a function from elsewhere as ``run``) with the caller's
    tracking URI, working folder (relative paths) and environment (credentials), as they are at the call."""
    import importlib

    if os.environ != env:
        for gone in set(os.environ) - set(env):
            del os.environ[gone]
        os.environ.update(env)
    if cwd is not None and _cwd() != cwd:
        os.chdir(cwd)
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    fn = functools.reduce(getattr, name.split("."), importlib.import_module(module))
    return fn(*args)  # a function of this module runs here: the worker has no uploads of its own


@remotely
def start_model(run_id: str, experiment_id: str, params: dict) -> str:
    """The run's logged model ``model``, created empty (MLflow's ``PENDING``) when the run starts,
    so that every metric of the run is logged as its own (MLflow 3). Created by ``Model.log``
    at the end instead, it would read the whole run and every metric's history back from the
    server to copy them to the model (a request per metric name). Its ID."""
    return mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment_id,
                                          params={k: str(v) for k, v in params.items()}).model_id


@remotely
def fail_model(model_id: str) -> None:
    """Mark a model of :func:`start_model` that ``pyfunc.log_pyfunc`` will not fill ``FAILED`` (as
    ``Model.log`` marks one it fails to log), not left pending."""
    from mlflow.entities import LoggedModelStatus

    mlflow.MlflowClient().finalize_logged_model(model_id, LoggedModelStatus.FAILED)


def log_dataset(ds, context: str = "training") -> dict:
    """Log an intermediate dataset as an MLflow dataset input, with its row counts and hash (params, returned)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(ds.path).resolve()))
    schema = Schema([ColSpec("string", "text"), ColSpec("string", "labels")])
    dataset = MetaDataset(source, name=ds.name, digest=ds.digest, schema=schema)._to_mlflow_entity()
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    run_id = _run_id()
    _submit(lambda: _log_inputs(run_id, inputs), ordered=True)
    params = {"dataset": ds.name, "dataset_digest": ds.digest, **{f"rows_{s}": n for s, n in ds.manifest.get("rows", {}).items()}}
    log_batch(params=params)
    return params


@remotely
def _log_inputs(run_id: str, inputs: list) -> None:
    client = mlflow.MlflowClient()
    try:
        client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException as e:
        # MLflow's SQL store inserts a new dataset row after checking it is absent: two runs logging
        # the same dataset at once (tuning workers, parallel trainings) race to a unique-key error
        # (SQLite: "UNIQUE constraint failed", PostgreSQL through a server: "violates unique constraint").
        # The row exists by now, so a second try links to it.
        if "unique constraint" not in str(e).lower() and "IntegrityError" not in str(e):
            raise
        client.log_inputs(run_id, datasets=inputs)


_background = None  # (uploads, ordered): the threads of :func:`uploading`, while a run uses them
_pending: list = []  # their futures, not yet waited for
_worker = None  # this process's tracking worker (:func:`remotely`), from its second fit on
_blocks = 0  # the :func:`uploading` blocks entered so far


@contextlib.contextmanager
def uploading():
    """Within this block, what a run logs through this module (:func:`log_file`,
    :func:`log_batch` and the helpers on them) goes to MLflow from background threads while the
    run goes on, so that a tracking server's requests overlap the work: files on two threads,
    metrics, params and tags on one, in the order they were logged. Leaving the block waits for
    all of it and raises the first failure; enter it inside the run, so that the run ends
    after what it logged. (MLflow's own asynchronous logging polls: ending a run waited up to a
    second for it.) From a process's second block on (a sweep), the threads hand MLflow's calls to
    a tracking worker process (:func:`remotely`); a single fit does not pay for starting one."""
    global _background, _blocks
    from concurrent.futures import ThreadPoolExecutor

    if _background is not None:  # already inside one (a nested fit): that one waits
        yield
        return
    _blocks += 1
    if _blocks >= 2:
        _start_worker()
    _background = (ThreadPoolExecutor(2, thread_name_prefix="ktt-upload"),
                   ThreadPoolExecutor(1, thread_name_prefix="ktt-log"))
    try:
        yield
    finally:
        pools, _background = _background, None
        for pool in pools:
            pool.shutdown(wait=True)
        errors = _settle()
        if errors and sys.exc_info()[0] is None:  # never hide the error that ended the block
            raise errors[0]


def _start_worker() -> None:
    """Start the tracking worker unless it runs (``KTT_TRACKING_WORKER=0``: none, MLflow's calls
    stay on this process's threads)."""
    global _worker
    import atexit

    from .worker import Worker

    if (_worker is not None and _worker.alive) or _no_worker():
        return
    try:
        _worker = Worker()
    except OSError as e:  # no process to spare: this process's threads do it
        log.warning("no tracking worker (%s): MLflow's calls run on this process's threads", e)
        _worker = None
        return
    atexit.register(_worker.close, 60)  # it finishes what it was sent: nothing is lost at exit


def _settle() -> list[Exception]:
    """Wait for everything logged in the background so far; what failed."""
    done, _pending[:] = list(_pending), []
    return [f.exception() for f in done if f.exception() is not None]


def _run():
    """The active run; like MLflow's own ``log_*``, a run is started when none is."""
    return mlflow.active_run() or mlflow.start_run()


def _run_id() -> str:
    return _run().info.run_id


def _submit(work, ordered: bool):
    if _background is None:
        return work()
    _pending.append(_background[ordered].submit(work))
    return _pending[-1]


def in_order(work):
    """``work()``, after what the run logged so far and before what it logs next: on the thread
    that logs metrics, params and tags, inside :func:`uploading` (returns its future), here
    otherwise (returns its result)."""
    with _unsent_lock:  # a batch queued before ``work`` must take nothing logged after it
        _unsent.clear()
    return _submit(work, ordered=True)


_unsent: dict = {}  # run ID -> the metrics, params and tags of :func:`log_batch` not yet sent
_unsent_lock = threading.Lock()


def log_batch(metrics: dict | None = None, params: dict | None = None, tags: dict | None = None,
              step: int | None = None, model_id=None) -> None:
    """Metrics, params and tags of the active run (MLflow's ``log_batch``). Inside
    :func:`uploading` they are sent in the background, together with any logged before them
    that are not sent yet (one request); ``model_id`` may be the future of one (:func:`in_order`)."""
    now = int(time.time() * 1000)
    run_id = _run_id()
    metrics = [(k, float(v), step or 0, model_id) for k, v in (metrics or {}).items()]

    def send(metrics, params, tags):
        ids = {id(m): m.result() if hasattr(m, "result") else m for *_, m in metrics}
        _log_batch(run_id, [(k, v, s, ids[id(m)]) for k, v, s, m in metrics],
                   {k: str(v) for k, v in params.items()}, {k: str(v) for k, v in tags.items()}, now)
    if _background is None:
        return send(metrics, params or {}, tags or {})
    with _unsent_lock:
        batch = _unsent.get(run_id)
        if batch is not None:  # a request that has not left yet takes these too
            batch[0].extend(metrics), batch[1].update(params or {}), batch[2].update(tags or {})
            return
        batch = _unsent[run_id] = (metrics, dict(params or {}), dict(tags or {}))

    def take_and_send():
        with _unsent_lock:
            if _unsent.get(run_id) is batch:
                del _unsent[run_id]
        send(*batch)
    _submit(take_and_send, ordered=True)


@remotely
def _log_batch(run_id: str, metrics: list, params: dict, tags: dict, timestamp: int) -> None:
    from mlflow.entities import Metric, Param, RunTag

    mlflow.MlflowClient().log_batch(run_id, metrics=[Metric(k, v, timestamp, s, model_id=m) for k, v, s, m in metrics],
                                    params=[Param(k, v) for k, v in params.items()],
                                    tags=[RunTag(k, v) for k, v in tags.items()])


@functools.lru_cache(maxsize=16)
def artifact_store(artifact_uri: str, tracking_uri: str):
    """The artifact store at a run's ``artifact_uri``. (MLflow's client finds it by reading the
    run back from the tracking server: a request from each thread that first logs to a run.)"""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def _active_store() -> tuple[str, str]:
    """Where the active run's files go: what :func:`_upload` takes (:func:`artifact_store`'s key)."""
    return _run().info.artifact_uri, mlflow.get_tracking_uri()


@remotely
def _upload(artifact_uri: str, tracking_uri: str, path: str, artifact_path: str | None) -> None:
    artifact_store(artifact_uri, tracking_uri).log_artifact(path, artifact_path)


def log_file(write, artifact_file: str) -> None:
    """Log an artifact of the active run that ``write(path)`` writes into a temp folder: both
    in the background inside :func:`uploading` (``write`` must read nothing the caller changes
    afterwards), here otherwise."""
    where, parent = _active_store(), str(Path(artifact_file).parent)

    def work():
        folder = Path(tempfile.mkdtemp(prefix="ktt-artifact-"))
        try:
            write(folder / Path(artifact_file).name)
            _upload(*where, str(folder / Path(artifact_file).name), None if parent == "." else parent)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    _submit(work, ordered=False)


def log_path(path: Path, artifact_path: str | None = None) -> None:
    """Upload the file ``path`` to the active run's ``artifact_path``, in the background inside
    :func:`uploading` (the file must stay as it is until the block ends)."""
    where = _active_store()
    _submit(lambda: _upload(*where, str(path), artifact_path), ordered=False)


def log_text(text: str, artifact_file: str) -> None:
    log_file(lambda p: p.write_text(text, encoding="utf-8"), artifact_file)


def log_dict(d: dict, artifact_file: str) -> None:
    log_file(lambda p: p.write_text(json.dumps(d, indent=1, default=str), encoding="utf-8"), artifact_file)


def log_table(df, artifact_file: str) -> None:
    """A DataFrame in the file format of ``mlflow.log_table`` (``{"columns", "data"}``), in one
    upload: ``mlflow.log_table`` also lists, re-reads and re-tags the run, seven requests to a
    tracking server per table (it keeps a tag for the UI's table comparison, which KTT does not use)."""
    log_file(lambda p: df.to_json(p, orient="split", index=False, date_format="iso"), artifact_file)


def run_artifact(run_id: str, folder: str, name_matches) -> Path | None:
    """The first artifact under ``folder`` of run ``run_id`` whose file name ``name_matches``,
    downloaded (a local path as it is); ``None`` when there is none."""
    client = mlflow.MlflowClient()
    for art in client.list_artifacts(run_id, folder):
        if name_matches(Path(art.path).name):
            import atexit

            dst = tempfile.mkdtemp(prefix="ktt-artifact-")
            atexit.register(shutil.rmtree, dst, True)  # a copy for this process: none left behind
            try:
                return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=art.path, dst_path=dst))
            except Exception as e:  # a full disk, a store gone: MLflow's errors name neither
                free = shutil.disk_usage(tempfile.gettempdir()).free / 1e6
                raise Unavailable(f"cannot download {art.path} ({(art.file_size or 0) / 1e6:.0f} MB) of run {run_id}: "
                                  f"{str(e).splitlines()[0][:200]} ({free:.0f} MB free in {tempfile.gettempdir()})") from None
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
    """A pyarrow table (or a function that makes it, called when it is written: :func:`log_file`)
    as a Parquet run artifact (one upload)."""
    import pyarrow.parquet as pq

    log_file(lambda p: pq.write_table(table() if callable(table) else table, p), artifact_file)


def load_test_rows(run_id: str) -> dict:
    """What :func:`log_test_rows` logged for ``run_id``; NotFound for a run without it."""
    import pandas as pd

    try:
        path = run_artifact(run_id, str(Path(TEST_ROWS).parent), lambda n: n == Path(TEST_ROWS).name)
    except Exception as e:  # MLflow raises several types for an unknown run
        raise NotFound(f"no MLflow run {run_id!r} ({str(e).splitlines()[0]})") from None
    if path is None:
        children = mlflow.MlflowClient().search_runs(
            [mlflow.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=100)
        if children:  # ``ktt train --seeds`` prints the parent; its seeds are what a comparison pools
            raise NotFound(f"run {run_id} is the parent of {len(children)} runs and scored no test rows itself: "
                           f"compare its runs, {','.join(sorted(c.info.run_id for c in children))}")
        raise NotFound(f"run {run_id} logged no {TEST_ROWS} (runs trained before it was logged cannot be compared)")
    return {k: v.to_numpy() for k, v in pd.read_parquet(path).items()}


def bootstrap_runs(a: list[str], b: list[str], n_boot: int = 2000, seed: int = 0, resample: str = "texts") -> dict:
    """:func:`ktt.compare.paired_bootstrap` of runs ``b`` against runs ``a`` (seeds: the same number
    on each side) from their logged test rows: each resample draws the test texts once, the same
    draw for every run of both sides (``resample``: see there). ``BadValue`` naming the run unless
    every run scored the same test rows in the same order (a run logs no text per row: its true
    leaves are compared, and their number)."""
    from .compare import paired_bootstrap

    if len(a) != len(b):
        raise BadValue(f"{len(a)} runs against {len(b)}: give each side the same number of seeds")
    ids = [*a, *b]
    rows = {r: load_test_rows(r) for r in dict.fromkeys(ids)}
    first = rows[ids[0]]["true_leaf"]
    for r in ids[1:]:
        leaf = rows[r]["true_leaf"]
        if len(leaf) != len(first):
            raise BadValue(f"run {r} scored {len(leaf)} test rows, run {ids[0]} {len(first)}: "
                           "compare runs on the same test rows")
        if (leaf != first).any():
            raise BadValue(f"run {r} and run {ids[0]} differ in the true leaf of test row {np.argmax(leaf != first)} "
                           f"(of {len(first)}): compare runs on the same test rows, in the same order")
    return paired_bootstrap(*([rows[r] for r in side] for side in (a, b)), n_boot, seed, resample=resample)


def compare_runs(a: list[str], b: list[str], n_boot: int = 2000, seed: int = 0, resample: str = "texts") -> dict:
    """:func:`bootstrap_runs`, logged as a run of its own (``ktt.stage`` compare) in the experiment
    of ``a``'s first run; returns the numbers and that run's ID."""
    result = bootstrap_runs(a, b, n_boot, seed, resample)
    experiment_id = mlflow.MlflowClient().get_run(a[0]).info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name="compare", nested=mlflow.active_run() is not None,
                          tags={"ktt.stage": "compare", "ktt.compare.a": ",".join(a), "ktt.compare.b": ",".join(b)}):
        mlflow.log_params({"n_boot": n_boot, "seed": seed, "runs_per_side": len(a), "resample": resample})
        mlflow.log_metrics({f"{m}_{k}": float(v) for m, r in result.items() for k, v in r.items()})
        log_dict(result, "compare.json")
        run_id = mlflow.active_run().info.run_id
    return {"run_id": run_id, **result}
