"""The MLflow UI as a user sees it, in a real headless Chromium: the run's figures render and its
registered model shows on the run page."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import Server, clean_env, http_ok

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (`make test` installs it as root)")


def browse(url: str, *extra) -> str:
    """The page after its scripts ran: the DOM, or with ``--screenshot=FILE`` nothing."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=20000", "--window-size=1400,1000", *extra, url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_run_page_shows_figures_and_registered_model(tmp_path):
    import mlflow
    from PIL import Image

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    ktt = [sys.executable, "-m", "ktt"]
    subprocess.run([*ktt, "generate", "--rows", "400", "--out", tmp_path / "d", "--no-track"], env=env, check=True,
                   cwd=tmp_path, capture_output=True)
    out = subprocess.run([*ktt, "train", "tfidf_lsgd", "synthetic", "--datasets", tmp_path / "d", "--weights",
                          tmp_path / "w", "-p", "max_iter=50"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", out.stdout).group(1)
    client = mlflow.MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    assert client.get_experiment(exp).name == "synthetic"
    mlflow.set_tracking_uri(uri)
    mlflow.register_model(f"runs:/{run_id}/model", "shop")

    server = Server(lambda p: [str(shutil.which("mlflow", path=os.path.dirname(sys.executable))), "server",
                               "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(p[0])],
                    lambda p, log: http_ok(f"http://127.0.0.1:{p[0]}/health"), env=env, timeout=120)
    base = f"http://127.0.0.1:{server.ports[0]}/#/experiments/{exp}/runs/{run_id}"
    try:
        page = browse(base, "--dump-dom")
        assert "Registered models" in page and re.search(r'href="[^"]*shop/versions/1"', page)
        figure = base + "/artifacts/figures/test_levels.png"
        # the browser fetched the PNG and shows it as an image
        assert re.search(r'<img alt="figures/test_levels.png" src="blob:', browse(figure, "--dump-dom"))
        browse(figure, f"--screenshot={tmp_path / 'shot.png'}")
    finally:
        server.stop()
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).reshape(-1, 3)
    for colour in ((0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52), (0x55, 0xA8, 0x68)):  # the three bar colours
        assert (np.abs(shot.astype(int) - colour).max(axis=1) <= 3).sum() > 2000, colour
