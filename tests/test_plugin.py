"""docs/adding_a_model.md, followed word for word by a newcomer: a new model folder and one line,
then `ktt train`, the MLflow pyfunc, `ktt export --bento` and a request to the BentoService."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Served, clean_env, needs_serving

DOC = ROOT / "docs" / "adding_a_model.md"
TITLES = ["Basmati Rice 5 kg", "Tomato Ketchup 500 g", "Green Tea Bags, 25 pcs"]


def doc_files() -> dict[str, str]:
    """The doc's ```python blocks whose first line names a file: ``{path: text}``."""
    blocks = re.findall(r"```python\n# ([\w/.]+)[^\n]*\n(.*?)```", DOC.read_text(), re.S)
    return dict(blocks)


def follow_the_doc(repo: Path) -> None:
    """Copy what a clone holds, then do exactly what the doc says."""
    for part in ("ktt", "models", "requirements", "scripts", "hyperparameters.json"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / part)
    for path, text in doc_files().items():
        target = repo / path
        if target.exists():  # the registration: lines added to MODELS
            old = target.read_text()
            target.write_text(old.replace("MODELS = {\n", "MODELS = {\n" + text, 1))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


def test_the_doc_asks_for_one_folder_and_one_line():
    files = doc_files()
    assert set(files) == {"models/my_model/my_model.py", "models/my_model/__init__.py", "models/__init__.py"}
    assert len(files["models/__init__.py"].strip().splitlines()) == 1


@pytest.mark.slow
@needs_serving
def test_a_new_model_trains_loads_exports_and_serves(tmp_path, bigbasket_small, tiny_encoder):
    repo = tmp_path / "repo"
    repo.mkdir()
    follow_the_doc(repo)
    # nothing but the new folder and one line differs from the repository
    changed = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and (not (ROOT / p.relative_to(repo)).is_file()
                    or (ROOT / p.relative_to(repo)).read_bytes() != p.read_bytes())}
    assert changed == {"models/__init__.py", "models/my_model/my_model.py", "models/my_model/__init__.py"}

    env = clean_env(PYTHONPATH=repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
                    KTT_DATASETS=bigbasket_small, KTT_WEIGHTS=tmp_path / "weights", KTT_BUILD=tmp_path / "build",
                    KTT_SERVING_PYTHON=ROOT / ".venv-serving/bin/python")

    def run(*args, cwd=repo):
        proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = run("-m", "ktt", "train", "my_model", "bb_small", "-p", "epochs=1", "-p", "label_smoothing=0.1",
              "-p", f"encoder={tiny_encoder}", "-p", "encoder_lr=1e-3", "-p", "classifier_lr=3e-3")
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)

    # the logged pyfunc carries its own code: loaded from elsewhere, without the copy on the path
    del env["PYTHONPATH"]
    paths = json.loads(run("-c", "import json, mlflow, pandas as pd; m = mlflow.pyfunc.load_model('runs:/%s/model'); "
                                 "print(json.dumps([p.split(' > ') for p in m.predict(pd.DataFrame({'text': %r}))['path']]))"
                                 % (run_id, TITLES), cwd=tmp_path).splitlines()[-1])
    assert len(paths) == len(TITLES) and all(len(p) == 3 for p in paths)
    env["PYTHONPATH"] = str(repo)

    run("-m", "ktt", "export", run_id, "--bento")
    build = tmp_path / "build" / "my_model_bb_small"
    assert "class MyModel(KTTService)" in (build / "bentoml" / "svc_lts.py").read_text()
    svc = Served(build / "inference")
    try:
        answers = [svc.post("predict", {"text": t}).json() for t in TITLES]
        bad = svc.post("predict", {"text": 3})
    finally:
        svc.stop()
    assert answers == ["\n".join(p) for p in paths]  # the service answers what the pyfunc does
    assert bad.status_code == 400 and "must be a string" in bad.text


def test_bad_values_are_refused_at_creation(bigbasket):
    """The doc's `constraints`: a value out of range fails when the model is created."""
    from ktt import registry

    with pytest.raises(ValueError, match=r"hyperparameter 'dropout' of model 'db_bhcn': 1.5 is not in \[0, 1\)"):
        registry.create("db_bhcn", bigbasket.hierarchy, dropout=1.5)
    with pytest.raises(ValueError, match=r"'act' of model 'db_bhcn': 'swish' is not one of \['relu', 'gelu', 'tanh'\]"):
        registry.create("db_bhcn", bigbasket.hierarchy, act="swish")
    with pytest.raises(ValueError, match=r"'monitor' of model 'db_linear': 'hf1' is not loss or a validation metric"):
        registry.create("db_linear", bigbasket.hierarchy, monitor="hf1")
    with pytest.raises(ValueError, match=r"'alpha' of model 'tfidf_lsgd': 0.0 is not in \(0, inf\)"):
        registry.create("tfidf_lsgd", bigbasket.hierarchy, alpha=0)
