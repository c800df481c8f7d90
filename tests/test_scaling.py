"""Beyond one machine, on the real engines: a team MLflow server (PostgreSQL backend, served
artifacts, basic-auth) and an Optuna study on PostgreSQL shared by separate tuning workers."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from conftest import KTT, ROOT, Server, clean_env, http_ok

pytestmark = pytest.mark.slow
MLFLOW = ROOT / ".venv" / "bin" / "mlflow"
ADMIN = ("admin", "admin-password-1234")
USERS = {"alice": "alice-password-1234", "bob": "bob-password-1234"}


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`mlflow server` as a team runs it: runs in PostgreSQL, artifacts uploaded to and served by
    the server, MLflow's basic-auth app (new users may read every experiment, write only their own)."""
    folder = tmp_path_factory.mktemp("team-server")
    ini = folder / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {postgres.url('mlflow_auth')}\n"
                   f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = clean_env(MLFLOW_AUTH_CONFIG_PATH=ini, MLFLOW_FLASK_SERVER_SECRET_KEY="ktt-test-secret")
    server = Server(lambda ports: [str(MLFLOW), "server", "--backend-store-uri", postgres.url("mlflow"),
                                   "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
                                   "--host", "127.0.0.1", "--port", str(ports[0]), "--workers", "2",
                                   "--app-name", "basic-auth"],
                    lambda ports, log: http_ok(f"http://127.0.0.1:{ports[0]}/health"), env=env)
    url = f"http://127.0.0.1:{server.ports[0]}"
    admin = subprocess.run([sys.executable, "-c", "import sys; from mlflow.server import get_app_client\n"
                            "c = get_app_client('basic-auth', tracking_uri=sys.argv[1])\n"
                            "for u, p in zip(sys.argv[2::2], sys.argv[3::2]): c.create_user(u, p)",
                            url, *[x for kv in USERS.items() for x in kv]],
                           env={**env, "MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]},
                           capture_output=True, text=True, timeout=120)
    assert admin.returncode == 0, admin.stderr[-2000:]
    yield SimpleNamespace(url=url, artifacts=folder / "artifacts", postgres=postgres, server=server)
    server.stop()


def ktt(server, *args, user=None, cwd, datasets, password=None, wait=True, **extra):
    """``ktt ARGS`` as a team member on their own machine (their own folder), tracking to ``server``."""
    env = clean_env(MLFLOW_TRACKING_URI=server.url if hasattr(server, "url") else server, KTT_DATASETS=datasets,
                    KTT_WEIGHTS=Path(cwd) / "weights", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", **extra)
    if user:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or USERS[user])
    Path(cwd).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(KTT), *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return proc
    out = proc.communicate(timeout=900)[0]
    return SimpleNamespace(returncode=proc.returncode, output=out)


def client_as(monkeypatch, server, user, password=None):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or (ADMIN[1] if user == "admin" else USERS[user]))
    return mlflow.MlflowClient(tracking_uri=server.url)


def test_server_refuses_before_any_work(team_server, bigbasket_small, tmp_path):
    train = ("train", "tfidf_hsgd", "bb_small", "--experiment", "team")
    no_login = ktt(team_server, *train, cwd=tmp_path / "anon", datasets=bigbasket_small)
    assert no_login.returncode == 2, no_login.output
    assert "needs a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in no_login.output
    wrong = ktt(team_server, *train, user="alice", password="not-her-password", cwd=tmp_path / "wrong",
                datasets=bigbasket_small)
    assert wrong.returncode == 2 and "refused the login of user 'alice'" in wrong.output, wrong.output

    # a web server that is up but is not MLflow (here: a folder served over HTTP, /health included)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "health").write_text("OK")
    web = HTTPServer(("127.0.0.1", 0), lambda *a: SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "site")))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        other = ktt(f"http://127.0.0.1:{web.server_port}", *train, user="alice", cwd=tmp_path / "other",
                    datasets=bigbasket_small)
    finally:
        web.shutdown()
    assert other.returncode == 2 and "does not answer as an MLflow tracking server" in other.output, other.output
    for r in (no_login, wrong, other):
        assert "Traceback" not in r.output
    assert not any((tmp_path / d / "weights").exists() for d in ("anon", "wrong", "other"))


def test_team_trains_exports_and_scores_through_the_server(team_server, bigbasket_small, tmp_path, monkeypatch):
    before = len(team_server.server.text().splitlines())
    fit = ktt(team_server, "train", "tfidf_hsgd", "bb_small", "--experiment", "team", user="alice",
              cwd=tmp_path / "alice", datasets=bigbasket_small)
    assert fit.returncode == 0, fit.output
    sent = [line for line in team_server.server.text().splitlines()[before:] if " HTTP/1.1\" " in line]
    assert not [line for line in sent if "/runs/get?" in line or "/get-history?" in line]  # a fit reads nothing back
    run_id = re.search(r"MLflow run (\w+):", fit.output).group(1)
    client = client_as(monkeypatch, team_server, "admin")
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded, not written beside the client
    # MLflow's link to the run, printed without reading the run back
    assert f"View run tfidf_hsgd-bb_small at: {team_server.url}/#/experiments/{run.info.experiment_id}/runs/{run_id}\n" \
        in fit.output
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")}
    assert any(n.startswith("best_") for n in logged), logged
    on_server = {p.name for p in team_server.artifacts.rglob("checkpoints/*")}
    assert logged <= on_server  # in the server's artifact store, on the server's disk
    exp = client.get_experiment_by_name("team")

    # bob may read the team's experiment but not write to it: refused before any training
    denied = ktt(team_server, "train", "tfidf_hsgd", "bb_small", "--experiment", "team", user="bob",
                 cwd=tmp_path / "bob", datasets=bigbasket_small)
    assert denied.returncode == 2, denied.output
    assert "user 'bob' may not write to experiment 'team'" in denied.output and "Traceback" not in denied.output
    assert not (tmp_path / "bob" / "weights").exists()
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]

    # alice registers it; on a machine with no local checkpoint, export downloads it from the server
    reg = ktt(team_server, "export", f"runs:/{run_id}", "--no-onnx", "--register", "bb-team", user="alice",
              cwd=tmp_path / "alice", datasets=bigbasket_small)
    assert reg.returncode == 0, reg.output
    exported = ktt(team_server, "export", "models:/bb-team@champion", user="alice", cwd=tmp_path / "laptop",
                   datasets=bigbasket_small)
    assert exported.returncode == 0, exported.output
    assert (tmp_path / "laptop" / "build" / "tfidf_hsgd_bb_small" / "onnx" / "tfidf.npz").is_file()  # TF-IDF: arrays
    assert not (tmp_path / "laptop" / "weights").exists()

    # bob can read the registered model: he scores a file with it
    test = pd.read_parquet(bigbasket_small / "bb_small" / "test.parquet")[["text"]].head(40)
    test.to_csv(tmp_path / "titles.csv", index=False)
    scored = ktt(team_server, "predict", "models:/bb-team@champion", tmp_path / "titles.csv", tmp_path / "out.csv",
                 user="bob", cwd=tmp_path / "bob", datasets=bigbasket_small)
    assert scored.returncode == 0, scored.output
    assert len(pd.read_csv(tmp_path / "out.csv")) == 40


def test_experiment_runs_on_the_server(team_server, tmp_path, monkeypatch):
    done = ktt(team_server, "experiment", ROOT / "experiments" / "smoke.yaml", "--datasets", tmp_path / "ds",
               user="alice", cwd=tmp_path, datasets=tmp_path / "ds")
    assert done.returncode == 0, done.output
    client = client_as(monkeypatch, team_server, "alice")
    exp = client.get_experiment_by_name("ktt-smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ktt.stage") == "experiment"]
    assert len(parents) == 1
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags["ktt.model"] for r in kids} >= {"tfidf_lsgd", "tfidf_hsgd"}
    assert "ranking.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_processes_creating_one_experiment_at_once_all_write_to_it(team_server, monkeypatch):
    """MLflow's own set_experiment makes the experiment active only in the process whose create
    won; the others' runs went to Default (refused there on a team server: the tuning fleet's error)."""
    script = ("import sys, mlflow\nfrom ktt.tracking import set_experiment, start_run\n"
              "set_experiment(sys.argv[1])\nwith start_run() as run: pass\nprint(run.info.experiment_id)")
    env = clean_env(MLFLOW_TRACKING_URI=team_server.url, MLFLOW_TRACKING_USERNAME="alice",
                    MLFLOW_TRACKING_PASSWORD=USERS["alice"])
    client = client_as(monkeypatch, team_server, "alice")
    for i in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", script, f"at-once-{i}"], env=env, cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        exp = client.get_experiment_by_name(f"at-once-{i}")
        assert [o.strip().splitlines()[-1] for o in outs] == [exp.experiment_id] * 2
        assert len(client.search_runs([exp.experiment_id])) == 2


def tune_args(storage, study, n):
    return ("tune", "tfidf_hsgd", "bb_small", "--storage", storage, "--study-name", study, "--n-trials", n,
            "--experiment", study, "--heartbeat", 1)


def test_separate_workers_share_one_study_on_postgres(team_server, bigbasket_small, tmp_path, monkeypatch):
    storage = team_server.postgres.url("optuna_fleet")
    workers = [ktt(team_server, *tune_args(storage, "fleet", 3), user="alice", cwd=tmp_path / f"machine{i}",
                   datasets=bigbasket_small, wait=False) for i in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    study = optuna.load_study(study_name="fleet", storage=storage)
    assert len(study.trials) == 6
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    client = client_as(monkeypatch, team_server, "alice")
    exp = client.get_experiment_by_name("fleet")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ktt.stage") == "tune"]
    assert len(parents) == 1 and study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(r.data.tags["ktt.trial"]) for r in kids) == list(range(6))
    assert parents[0].data.metrics["n_complete"] == 6 and parents[0].data.metrics["best_trial_value"] == \
        pytest.approx(study.best_value)


def test_killed_worker_leaves_the_study_usable(team_server, bigbasket_small, tmp_path, monkeypatch):
    storage = team_server.postgres.url("optuna_killed")
    client = client_as(monkeypatch, team_server, "alice")
    doomed = ktt(team_server, *tune_args(storage, "killed", 5), user="alice", cwd=tmp_path / "a",
                 datasets=bigbasket_small, wait=False)
    deadline, victim = time.monotonic() + 300, None
    while victim is None and time.monotonic() < deadline and doomed.poll() is None:
        os.killpg(doomed.pid, signal.SIGSTOP)  # looked at frozen: what is seen running cannot end before the kill
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
        except KeyError:  # not created yet
            study = None
        running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING] if study else []
        exp = client.get_experiment_by_name("killed")
        if running and exp and client.search_runs([exp.experiment_id], f"tags.`ktt.trial` = '{running[0].number}' "
                                                                         "and attributes.status = 'RUNNING'"):
            victim = running[0]  # a trial in the middle of its training run
        else:
            os.killpg(doomed.pid, signal.SIGCONT)
            time.sleep(0.1)
    assert victim is not None, doomed.communicate()[0] if doomed.poll() is not None else "no trial ran"
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    time.sleep(3)  # two heartbeats of silence

    joiner = ktt(team_server, *tune_args(storage, "killed", 2), user="alice", cwd=tmp_path / "b",
                 datasets=bigbasket_small)
    assert joiner.returncode == 0, joiner.output
    study = optuna.load_study(study_name="killed", storage=storage)
    trials = {t.number: t for t in study.trials}
    assert trials[victim.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params == victim.params
    exp = client.get_experiment_by_name("killed")
    killed = client.search_runs([exp.experiment_id], f"tags.`ktt.trial` = '{victim.number}'")
    assert [r.info.status for r in killed] == ["KILLED"]
    assert not [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"]


def test_a_server_that_would_have_clients_write_artifacts_locally_is_refused(bigbasket_small, tmp_path):
    """`mlflow server --no-serve-artifacts` with a folder as artifact root hands clients a path to
    write to on their own disk: KTT refuses before training instead of scattering checkpoints."""
    env = clean_env()
    server = Server(lambda ports: [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
                                   "--no-serve-artifacts", "--default-artifact-root", str(tmp_path / "server-side"),
                                   "--host", "127.0.0.1", "--port", str(ports[0]), "--workers", "1"],
                    lambda ports, log: http_ok(f"http://127.0.0.1:{ports[0]}/health"), env=env)
    try:
        out = ktt(f"http://127.0.0.1:{server.ports[0]}", "train", "tfidf_hsgd", "bb_small", cwd=tmp_path / "client",
                  datasets=bigbasket_small)
    finally:
        server.stop()
    assert out.returncode == 2, out.output
    assert "a folder that this machine would write to its own disk: start the server with --serve-artifacts" \
        in out.output and "Traceback" not in out.output
    assert not (tmp_path / "server-side").exists() and not (tmp_path / "client" / "weights").exists()


def test_runs_logging_one_dataset_at_once_all_link_to_it(team_server, bigbasket_small, monkeypatch):
    """Runs logging the same dataset into a new experiment at the same moment (tuning workers
    starting together): on PostgreSQL, MLflow's check-then-insert loses the race with a unique-key
    error for all but one; every run still ends up linked to the one dataset. Ten experiments of
    six runs each, as the race is not lost every time."""
    import mlflow

    from ktt.data import load_dataset
    from ktt.tracking import log_dataset

    client = client_as(monkeypatch, team_server, "alice")
    mlflow.set_tracking_uri(team_server.url)
    ds = load_dataset("bb_small", bigbasket_small)
    for round in range(10):
        exp = client.create_experiment(f"one-dataset-{round}")
        errors, start = [], threading.Barrier(6)

        def one():
            try:
                with mlflow.start_run(experiment_id=exp):
                    start.wait(timeout=60)
                    log_dataset(ds)
            except Exception as e:  # noqa: BLE001 - collected for the assertion below
                errors.append(e)

        workers = [threading.Thread(target=one) for _ in range(6)]
        [w.start() for w in workers]
        [w.join() for w in workers]
        assert not errors, errors
        runs = client.search_runs([exp])
        assert len(runs) == 6
        assert all([i.dataset.digest for i in r.inputs.dataset_inputs] == [ds.digest] for r in runs)
