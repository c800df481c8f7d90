"""The helper process of ``ktt.worker`` and the tracking worker a sweep's fits log through."""
import operator
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ktt.worker import Gone, Worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.close(30)


def test_calls_run_in_the_worker_side_by_side(worker):
    assert worker.call(operator.add, 2, 3) == 5
    assert worker.call(os.getpid) not in (os.getpid(), None)
    with ThreadPoolExecutor(8) as pool:  # answers go back to the thread that asked, whatever their order
        got = list(pool.map(lambda i: worker.call(operator.mul, i, i), range(40)))
    assert got == [i * i for i in range(40)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: worker.call(time.sleep, 1.0), range(4)))
    assert time.perf_counter() - t0 < 3.5  # four threads there: not one after the other (4 s)


def test_errors_come_back_raised_and_the_worker_goes_on(worker):
    with pytest.raises(ValueError, match="invalid literal for int"):
        worker.call(int, "seven")
    with pytest.raises(TypeError, match="pickle"):  # an argument that cannot be sent fails here
        worker.call(len, threading.Lock())
    with pytest.raises(RuntimeError, match="TypeError: cannot pickle"):  # so does an answer that cannot come back
        worker.call(threading.Lock)
    assert worker.call(operator.neg, 4) == -4


def test_a_worker_that_dies_fails_the_calls_it_had_and_later_ones(worker):
    pid = worker.call(os.getpid)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(worker.call, time.sleep, 60)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Gone, match="ended"):
            pending.result(timeout=30)
    with pytest.raises(Gone):
        worker.call(operator.neg, 1)
    assert not worker.alive


def test_close_lets_the_worker_finish_what_it_was_sent(worker):
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(worker.call, time.sleep, 1)
        time.sleep(0.3)
        worker.close(30)
        assert pending.result(timeout=5) is None
    assert worker._proc.returncode == 0


def test_tracking_calls_run_as_the_caller(tmp_path, monkeypatch):
    """The tracking worker runs MLflow's calls with the caller's tracking URI, working folder and
    environment as they are at each call, and MLflow's errors come back with their code."""
    import mlflow

    from ktt import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "_worker", Worker())
    try:
        with mlflow.start_run() as run, tracking.uploading():
            monkeypatch.setenv("KTT_PROBE", "one")
            Path("here.txt").write_text("relative to the caller's folder")
            tracking.log_path(Path("here.txt"), "files")  # a relative path: the worker is elsewhere
            tracking.log_batch({"loss": 1.0}, params={"probe": os.environ["KTT_PROBE"]})
            assert tracking.remotely(os.getenv)("KTT_PROBE") == "one"
            assert tracking.remotely(os.getcwd)() == os.getcwd()
            assert tracking.remotely(os.getpid)() != os.getpid()
            with pytest.raises(mlflow.exceptions.MlflowException) as e:
                tracking.fail_model("m-0123456789abcdef0123456789abcdef")
            assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        assert tracking.remotely(os.getpid)() == os.getpid()  # outside a run's uploads: here
    finally:
        tracking._worker.close(30)
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "files")] == ["files/here.txt"]
    data = client.get_run(run.info.run_id).data
    assert data.metrics == {"loss": 1.0} and data.params == {"probe": "one"}


def test_a_sweeps_fits_log_through_one_worker(bigbasket_small, tmp_path):
    """A process's first fit logs from its own threads (no worker to start for a single ``ktt
    train``); from the second on, one tracking worker takes MLflow's calls, and each run holds
    all the same: metrics, params, files, its logged model (READY, loadable) and its dataset."""
    code = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import mlflow
from ktt import tracking
from ktt.train import train
mlflow.set_tracking_uri("sqlite:///" + os.path.abspath("mlflow.db"))
for i in range(3):
    train("tfidf_hsgd", "bb_small", datasets_root={str(bigbasket_small)!r}, weights_root="weights",
          experiment="sweep")
    print("worker", tracking._worker._proc.pid if tracking._worker else None, flush=True)
    os.makedirs(f"next{{i}}"); os.chdir(f"next{{i}}")  # relative weights folders: the worker follows
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    workers = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("worker")]
    assert workers[0] == "None" and workers[1] == workers[2] != "None"
    assert not Path(f"/proc/{workers[1]}").exists() or "Z" in Path(f"/proc/{workers[1]}/stat").read_text()

    import mlflow
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}

    def content(run):
        files = sorted(a.path for folder in (None, "metrics", "checkpoints", "figures")
                       for a in client.list_artifacts(run.info.run_id, folder) if not a.is_dir)
        models = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        return (sorted(run.data.metrics), sorted(run.data.params), sorted(run.data.tags),
                len(client.get_run(run.info.run_id).inputs.dataset_inputs),
                [f.rsplit("_", 1)[0] if f.startswith("checkpoints/") else f for f in files],
                [(m.status, sorted(x.key for x in m.metrics)) for m in models])
    first = content(runs[0])
    assert first[3] == 1 and "checkpoints/best" in first[4] and "figures/test_levels.png" in first[4]
    assert first[5] == [(LoggedModelStatus.READY, first[0])]  # every metric of the run, as the model's
    assert content(runs[1]) == first and content(runs[2]) == first
    model = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{runs[2].info.run_id}'")[0]
    import pandas as pd
    loaded = mlflow.pyfunc.load_model(model.artifact_location)
    assert len(loaded.predict(pd.DataFrame({"text": ["basmati rice 5kg"]}))) == 1
