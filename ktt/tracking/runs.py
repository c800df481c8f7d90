"""MLflow runs: the tracking server checked up front, runs started, what a run ran on, and every
reference to a trained model (a run ID, ``runs:/``, ``models:/``, a checkpoint file) resolved in one
place (:func:`resolve_source`), for export, ``--from``, ``--resume`` and taxonomy diffs alike."""
from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow

from ..errors import BadValue, NotFound, Unavailable
from .checkpoints import SUFFIX, newest
from .mlflow_compat import QuietRun

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
    return QuietRun(active)


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
    CPU, GPU, Python and thread settings) and the package list (``name==version`` lines) they hash.
    Two runs with the same hash ran on the same software."""
    import hashlib
    import importlib.metadata as md
    import platform

    from .. import threads

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


@dataclass
class Source:
    """A trained model: its name, dataset and checkpoint file, and the run that logged it (if any)."""

    model: str
    dataset: str
    checkpoint: Path
    run_id: str | None = None


def resolve_source(source: str | None = None, model: str | None = None, dataset: str | None = None,
                   weights_root: str | os.PathLike = "weights") -> Source:
    """A run ID, ``runs:/<id>[/...]``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    or (no source) a model and dataset: the newest ``best_`` checkpoint under ``weights/``."""
    from ..data import check_name

    if source is None:
        if not (model and dataset):
            raise BadValue("give a source (run ID, runs:/ or models:/ URI) or both --model and --dataset")
        folder = Path(weights_root) / model / check_name(dataset)
        best = newest(folder, "best")
        if best is None:
            raise NotFound(f"no best_ checkpoint in {folder}; train {model} on {dataset} first")
        return Source(model, dataset, best)
    check_tracking_uri()  # a registry or a run: the server must answer, and take the login
    return from_run(run_of(source))


def run_of(ref: str) -> str:
    """The run ID behind a run ID, ``runs:/<id>[/...]`` or ``models:/<name>@<alias>`` / ``/<version>``."""
    expected = "expected a run ID, runs:/<id>, models:/<name>@<alias> or models:/<name>/<version|latest>"
    if ref.startswith("runs:/") and ref[len("runs:/"):].strip("/"):
        return ref[len("runs:/"):].strip("/").split("/")[0]
    if RUN_ID.match(ref):
        return ref
    name, at, alias = ref[len("models:/"):].partition("@")
    name, slash, version = name.partition("/") if not at else (name, "", "")
    if not ref.startswith("models:/") or not name or not (alias or version):
        raise BadValue(f"cannot read {ref!r}: {expected}")
    client = mlflow.MlflowClient()
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version == "latest":  # MLflow's own URI form: the highest version
            mv = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, version)
    except Exception as e:
        raise NotFound(f"no registered model version {ref!r}: {(str(e).splitlines() or ['none'])[0]}") from None
    if not mv.run_id:
        raise BadValue(f"{ref} was not logged by a run; KTT needs the run's checkpoints")
    return mv.run_id


def from_run(run_id: str) -> Source:
    """The model a KTT training run logged: its ``ktt.model`` and ``ktt.dataset`` tags and ``best_`` checkpoint."""
    from ..data import check_name

    try:
        tags = mlflow.MlflowClient().get_run(run_id).data.tags
    except Exception:
        raise NotFound(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    if tags.get("ktt.stage") in ("tune", "seeds", "experiment"):  # a group of fits: its fits trained models
        best = tags.get("ktt.best_run_id")
        raise BadValue(f"MLflow run {run_id} is a {tags['ktt.stage']} run over several fits, not one trained model"
                       + (f"; its best trial is run {best}" if best else "; give one of its runs"))
    if "ktt.model" not in tags:
        raise BadValue(f"MLflow run {run_id} is not a KTT training run (no ktt.model tag)")
    dataset = check_name(tags.get("ktt.dataset", ""), f"dataset name in run {run_id}'s tag ktt.dataset:")
    return Source(tags["ktt.model"], dataset, resolve_checkpoint(run_id, "best"), run_id)


def run_artifact(run_id: str, folder: str | None, name_matches) -> Path | None:
    """The first artifact under ``folder`` of run ``run_id`` whose file name ``name_matches``,
    downloaded (a local path as it is); ``None`` when there is none."""
    client = mlflow.MlflowClient()
    for art in client.list_artifacts(run_id, folder):
        if name_matches(Path(art.path).name):
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


def run_side(run_id: str, name: str | None = None):
    """What run ``run_id`` logged of its taxonomy (``taxonomy.parquet``: ``ktt.taxonomy.Side``)."""
    from ..data import read_table
    from ..taxonomy import ARTIFACT, read_side

    found = run_artifact(run_id, None, lambda n: n == ARTIFACT)
    if not found:
        raise NotFound(f"MLflow run {run_id} logged no {ARTIFACT} (trained before taxonomy versions); "
                       "diff its dataset instead")
    return read_side(read_table(found), name or run_id)
