"""Serving: runs in the serving environment (numpy, onnxruntime, tokenizers; no torch, no MLflow)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def serving_python() -> Path:
    """The serving environment's python (bentoml 0.13.1): ``KTT_SERVING_PYTHON`` or ``.venv-serving``."""
    py = Path(os.environ.get("KTT_SERVING_PYTHON", str(ROOT / ".venv-serving" / "bin" / "python")))
    if not py.exists():
        from ..errors import Unavailable
        raise Unavailable(f"no serving environment at {py}: run `make env` (or set KTT_SERVING_PYTHON)")
    return py
