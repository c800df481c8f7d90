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


class KTTModel(mlflow.pyfunc.PythonModel):
    """``predict`` returns, per input row, the predicted class name at every level."""

    def load_context(self, context):
        from . import registry
        info = json.loads(Path(context.artifacts["info"]).read_text())
        self.model = registry.get(info["model"]).load(context.artifacts["checkpoint"])

    def __getstate__(self):  # MLflow pickles this object: the model comes from the artifacts, never the pickle
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def predict(self, context, model_input: list[str], params=None) -> list[list[str]]:
        return self.model.predict_paths(_texts(model_input))


def log_pyfunc(model_name: str, checkpoint: Path, hierarchy, example: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.json"
        info.write_text(json.dumps({"model": model_name, "depth": hierarchy.depth}))
        mlflow.pyfunc.log_model(
            name="model", python_model=KTTModel(),
            artifacts={"checkpoint": str(checkpoint), "info": str(info)},
            code_paths=[str(ROOT / "ktt"), str(ROOT / "models")],
            pip_requirements=str(ROOT / "requirements" / "main.txt"),
            input_example=example,
        )
