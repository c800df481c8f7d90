"""A KTT checkpoint as an MLflow pyfunc model, so any run can be registered and loaded by URI."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def _texts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[col].astype(str).tolist()
    return [str(t) for t in model_input]


def answers(model, texts: list[str]) -> pd.DataFrame:
    """Per text: ``path`` (class names joined by " > "), and at every level ``L<d>`` (the class)
    and ``L<d>_confidence`` (its score)."""
    import numpy as np

    from .hierarchy import SEP

    codes, scores = model.predict_scored(texts)
    h, rows = model.hierarchy, np.arange(len(texts))
    out = {"path": [SEP.join(p) for p in h.decode(codes)]}
    for d in range(h.depth):
        out[f"L{d + 1}"] = [h.levels[d][c][-1] for c in codes[:, d]]
        out[f"L{d + 1}_confidence"] = scores[d][rows, codes[:, d]].astype(float)
    return pd.DataFrame(out)


def signature(depth: int):
    """Input: a ``text`` column. Output: ``path``, then ``L<d>`` and ``L<d>_confidence`` per level."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "path")]
    for d in range(1, depth + 1):
        outputs += [ColSpec("string", f"L{d}"), ColSpec("double", f"L{d}_confidence")]
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))


class KTTModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a DataFrame with a ``text`` column (the signature) and returns :func:`answers`."""

    def load_context(self, context):
        from . import registry
        info = json.loads(Path(context.artifacts["info"]).read_text())
        self.model = registry.get(info["model"]).load(context.artifacts["checkpoint"])

    def __getstate__(self):  # MLflow pickles this object: the model comes from the artifacts, never the pickle
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return answers(self.model, _texts(model_input))


def log_pyfunc(model_name: str, checkpoint: Path, hierarchy, example: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.json"
        info.write_text(json.dumps({"model": model_name, "depth": hierarchy.depth}))
        mlflow.pyfunc.log_model(
            name="model", python_model=KTTModel(),
            artifacts={"checkpoint": str(checkpoint), "info": str(info)},
            code_paths=[str(ROOT / "ktt"), str(ROOT / "models")],
            pip_requirements=str(ROOT / "requirements" / "main.txt"),
            signature=signature(hierarchy.depth), input_example=pd.DataFrame({"text": example}),
        )
