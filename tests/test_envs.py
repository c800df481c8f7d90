"""The serving environment (bentoml 0.13.1, patched for Python 3.11) that `make env` builds."""
import os
import subprocess
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parent.parent / ".venv-serving" / "bin" / "python"


@pytest.mark.skipif(not SERVING.exists(), reason="no serving environment: run `make env`")
def test_serving_env_imports_patched_bentoml():
    code = ("import bentoml, onnxruntime, cloudpickle; from bentoml.adapters import JsonInput; "
            "from bentoml.utils import cloudpickle as vendored; "
            "assert vendored.dumps is cloudpickle.dumps; print(bentoml.__version__)")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    out = subprocess.run([str(SERVING), "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0.13.1"
    # the serving environment must not carry torch or MLflow
    out = subprocess.run([str(SERVING), "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('mlflow'))"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "None None"


@pytest.mark.skipif(not SERVING.exists(), reason="no serving environment: run `make env`")
def test_serving_env_imports_every_core_and_serving_module():
    """docs/architecture.md: the core and serving layers run in the serving environment."""
    from test_layout import LAYERS

    root = Path(__file__).resolve().parent.parent
    modules = [m for layer in ("core", "serving") for m in LAYERS[layer] if not m.endswith("*")]
    modules += [f"ktt.serving.{p.stem}" for p in (root / "ktt" / "serving").glob("*.py") if p.stem != "__init__"]
    out = subprocess.run([str(SERVING), "-c", f"import importlib; [importlib.import_module(m) for m in {modules!r}]"],
                         capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
