import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# huggingface_hub reads this once, at import: set before anything imports it (no network here)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# property tests: 60 random cases each; `make mutation` runs them once per mutant, with fewer
settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile("mutation", max_examples=8, deadline=None)
settings.load_profile(os.environ.get("KTT_HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data"))
SERVING_BIN = ROOT / ".venv-serving" / "bin"
KTT = ROOT / ".venv" / "bin" / "ktt"
needs_serving = pytest.mark.skipif(not (SERVING_BIN / "bentoml").exists(), reason="no serving env: run `make env`")
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A loopback port free right now (another process may take it before we bind: see ``Server``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process started on free loopback ports, its output in a log file (never an undrained pipe).

    ``make_cmd(ports)`` builds the command from ``n_ports`` free ports; ``ready(ports, log_text)``
    says when it is up. A start that loses a port to another process is retried on new ports;
    any other exit, or no readiness within ``timeout`` seconds, fails loudly with the log's end.
    """

    def __init__(self, make_cmd, ready, env=None, n_ports=1, timeout=180, attempts=3, on_start=None):
        """``on_start(pid)``: called the moment the process is started (before it is ready)."""
        for _ in range(attempts):
            self.ports = [free_port() for _ in range(n_ports)]
            self.log = Path(tempfile.mkstemp(prefix="ktt-server-", suffix=".log")[1])
            with open(self.log, "w") as out:
                self.proc = subprocess.Popen(make_cmd(self.ports), env=env, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            if on_start is not None:
                on_start(self.proc.pid)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if ready(self.ports, self.text()):
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.25)
            else:
                self.stop()
                raise TimeoutError(f"server not ready after {timeout} s: {self.text()[-3000:]}")
            if "address already in use" not in self.text().lower():
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.text()[-3000:]}")
        raise RuntimeError(f"no free port after {attempts} attempts: {self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signal the whole process group; SIGKILL what is left after ``timeout`` seconds."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
                raise
        return self.proc.returncode


def legacy_tfidf_pickle(model, path, fitted: dict) -> None:
    """A TF-IDF checkpoint as KTT pickled them before December 2026 (``fitted``: the attributes)."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump({"model": model.name, "params": model.params, "hierarchy": model.hierarchy.to_dict(),
                     "fitted": fitted}, f, protocol=pickle.HIGHEST_PROTOCOL)


def clean_env(**settings) -> dict:
    """This process's environment without its ``MLFLOW_*`` settings (a test's store, an experiment
    set by ``mlflow.set_experiment``), plus ``settings``: for a process that must see only what it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {k: str(v) for k, v in settings.items()}


def rss_kb(sid: int) -> int:
    """Resident memory of every process in session ``sid`` (a ``Server`` and its workers), in kB."""
    out = subprocess.run(["ps", "-o", "rss=", "--sid", str(sid)], capture_output=True, text=True, timeout=30).stdout
    return sum(int(x) for x in out.split())


# Nothing from inside a server: tracebacks, source or library paths, exception class names.
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages|/(usr|tmp|home|work|root)/|\b[A-Z]\w*(Error|Exception)\b")


def leaks(status: int, body: str) -> bool:
    """Whether an HTTP answer shows the server's internals (a 500 must name only a request id)."""
    return bool(LEAK.search(body)) or (status == 500 and "request id" not in body)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


class Served:
    """`bentoml serve` (or serve-gunicorn) of a built bundle on a free loopback port."""

    def __init__(self, bundle, gunicorn=False, probe="readyz", args=(), on_start=None, **env):
        """``probe``: the route whose 200 means started (``readyz``: warm, taking traffic; None:
        the front server accepts connections, the model server may still be loading);
        ``args``: more ``bentoml serve`` options; ``on_start``: see ``Server``; ``env``: more
        environment variables."""
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
               **{k: str(v) for k, v in env.items()}}
        self.server = Server(
            lambda ports: [str(SERVING_BIN / "bentoml"), "serve-gunicorn" if gunicorn else "serve", str(bundle),
                           "--port", str(ports[0])] + (["--workers", "1"] if gunicorn else []) + list(args),
            lambda ports, log: port_open(ports[0]) if probe is None else http_ok(f"http://127.0.0.1:{ports[0]}/{probe}"),
            env=env, timeout=300, on_start=on_start)
        self.port = self.server.ports[0]
        self.url = f"http://127.0.0.1:{self.port}"

    def post(self, route, body, raw=False):
        import requests

        data = body if raw else json.dumps(body)
        return requests.post(f"{self.url}/{route}", data=data, headers={"Content-Type": "application/json"}, timeout=30)

    def stop(self):
        self.server.stop()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real data missing: {path} (set KTT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def bigbasket_path():
    return _need(SHARED / "bigbasket_products.parquet")


@pytest.fixture(scope="session")
def bigbasket_df(bigbasket_path):
    return pd.read_parquet(bigbasket_path)


@pytest.fixture(scope="session")
def raw_csv():
    return _need(SHARED / "raw" / "bigbasket_products.csv")


@pytest.fixture(scope="session")
def clinc_df():
    return pd.read_parquet(_need(SHARED / "clinc150.parquet"))


@pytest.fixture(scope="session")
def bigbasket(bigbasket_df):
    """The full BigBasket dataset, official split as-is (the protocol of the README's baseline)."""
    from ktt.data import load_dataset, prepare, write_dataset
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ktt-bb-"))
    splits, h, _ = prepare(bigbasket_df, keep_duplicates=True)
    write_dataset(splits, h, root, "bigbasket")
    return load_dataset("bigbasket", root)


@pytest.fixture(scope="session")
def bigbasket_small(bigbasket_df, tmp_path_factory):
    """A real 600/150/150-row slice of BigBasket (its own hierarchy), for fast tracked runs."""
    from ktt.data import prepare, write_dataset

    df = bigbasket_df[bigbasket_df.labels.map(lambda p: p[0]).isin(["Beverages", "Snacks & Branded Foods"])]
    parts = [df[df.split == s].head(n) for s, n in (("train", 600), ("val", 150), ("test", 150))]
    splits, h, _ = prepare(pd.concat(parts))
    root = tmp_path_factory.mktemp("datasets")
    write_dataset(splits, h, root, "bb_small")
    return root


@pytest.fixture(autouse=True)
def no_leaked_mlflow_state(monkeypatch):
    """mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID and keeps the id in a global, and a test
    that fails inside a run leaves it on the active-run stack: neither may follow the next test into
    another store (or into its subprocesses)."""
    import mlflow.tracking.fluent as fluent

    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    fluent._active_experiment_id = None
    fluent._active_run_stack.get().clear()
    yield
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):  # set during the test: a
        os.environ.pop(var, None)  # module's fixture set up next (test_batch's fit) runs before delenv above
    fluent._active_experiment_id = None
    fluent._active_run_stack.get().clear()


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store for one test; returns its URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer, saved locally."""
    from ktt.testing import tiny_encoder

    return tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def bb300(bigbasket_df):
    """A real 300-row BigBasket training slice (two categories) with 100 val and 100 test rows."""
    from ktt.data import Split, prepare

    df = bigbasket_df[bigbasket_df.labels.map(lambda p: p[0]).isin(["Beverages", "Snacks & Branded Foods"])]
    parts = [df[df.split == s].head(n) for s, n in (("train", 300), ("val", 100), ("test", 100))]
    splits, h, _ = prepare(pd.concat(parts))
    return {k: Split(v.text.tolist(), [tuple(x) for x in v.labels], h) for k, v in splits.items()}


class Postgres:
    """A throw-away PostgreSQL cluster (Debian's ``postgresql``) in a temp folder on a free port.

    As root, the server runs as the ``postgres`` user (it refuses root). ``url(db)`` creates
    database ``db`` once and returns its SQLAlchemy URL.
    """

    def __init__(self):
        import glob
        import shutil

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin")) + [os.path.dirname(shutil.which("initdb") or "")]
        self.bin = next((Path(b) for b in reversed(bins) if b and (Path(b) / "initdb").exists()), None)
        if self.bin is None:
            pytest.skip("PostgreSQL is not installed (as root, `make test` installs Debian's postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="ktt-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                        "-U", "ktt", "--no-sync"], check=True, capture_output=True, timeout=120)
        self.server = Server(
            lambda ports: [*self.as_user, str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(ports[0]),
                           "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                           "-c", "max_connections=200"],
            lambda ports, log: "ready to accept connections" in log, timeout=60)
        self.port = self.server.ports[0]
        self.made = set()

    def url(self, db: str) -> str:
        import sqlalchemy

        if db not in self.made:
            engine = sqlalchemy.create_engine(f"postgresql://ktt@127.0.0.1:{self.port}/postgres",
                                              isolation_level="AUTOCOMMIT")
            with engine.connect() as c:
                c.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
            engine.dispose()
            self.made.add(db)
        return f"postgresql://ktt@127.0.0.1:{self.port}/{db}"

    def stop(self):
        import shutil

        self.server.stop(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop at once
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres()
    yield pg
    pg.stop()
