"""A KTT checkpoint as an MLflow pyfunc model, so any run can be registered and loaded by URI."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def _texts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[col].astype(str).tolist()
    return [str(t) for t in model_input]


def answers(model, texts: list[str], threshold: float | None = None,
            target_precision: float | None = None) -> pd.DataFrame:
    """Per text: ``path`` (class names joined by " > "), and at every level ``L<d>`` (the class)
    and ``L<d>_confidence`` (the probability the model gives it); empty (None, NaN) below where
    the answer stops (``Model.answers``: the path's end, the ``threshold``, or the threshold and
    depth of ``target_precision``); ``review``: the answer stopped above its path's end (``ktt.review``)."""
    h = model.hierarchy
    codes, conf = model.predict_confident(texts)
    depths = h.stop_depths(codes, conf, *model.stop(threshold, target_precision))  # as Hierarchy.answers_of, by column
    path = np.full(len(codes), "", dtype=object)
    out = {"path": path}
    for d in range(h.depth):
        on = d < depths
        names = np.array([p[-1] for p in h.levels[d]], dtype=object)[codes[:, d]]
        out[f"L{d + 1}"] = np.where(on, names, None)
        out[f"L{d + 1}_confidence"] = np.where(on, conf[:, d], np.nan)
        ends = depths == d + 1
        path[ends] = np.array(h.names(d), dtype=object)[codes[ends, d]]
    out["review"] = depths < h.path_depths(codes)
    return pd.DataFrame(out)


def signature(depth: int):
    """Input: a ``text`` column. Output: ``path``, then ``L<d>`` and ``L<d>_confidence`` per level,
    then ``review``.
    Parameters (per request): ``threshold`` (below 0, the default: unset, the model's own stop)
    or ``target_precision`` (0: unset; else the threshold that reached it on validation). MLflow
    fills in a default for every parameter, so an unset one must be a value nobody sends: the
    model's own threshold as the default read a threshold sent equal to it as unset, and capped
    its depth."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [ColSpec("string", "path")]
    for d in range(1, depth + 1):
        outputs += [ColSpec("string", f"L{d}", required=False), ColSpec("double", f"L{d}_confidence", required=False)]
    outputs.append(ColSpec("boolean", "review"))
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs),
                          params=ParamSchema([ParamSpec("threshold", "double", -1.0),
                                              ParamSpec("target_precision", "double", 0.0)]))


class KTTModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a DataFrame with a ``text`` column (the signature) and returns :func:`answers`;
    ``params={"threshold": t}`` stops answers at the deepest level whose confidence clears ``t``;
    ``params={"target_precision": p}`` at the threshold that reached precision ``p`` on validation."""

    def load_context(self, context):
        from . import registry
        info = json.loads(Path(context.artifacts["info"]).read_text())
        self.model = registry.get(info["model"]).load(context.artifacts["checkpoint"])

    def __getstate__(self):  # MLflow pickles this object: the model comes from the artifacts, never the pickle
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        target = params.get("target_precision") or None  # the signature's default, 0, means unset
        threshold = params.get("threshold")
        threshold = None if threshold is None or threshold < 0 else threshold  # so does a negative one
        if target is not None and threshold is not None:
            from .errors import BadValue
            raise BadValue("send a threshold or a target_precision, not both")
        return answers(self.model, _texts(model_input), threshold, target)

def log_pyfunc(model_name: str, checkpoint: Path, depth: int, example: list[str], run_id: str, model_id: str):
    """Log the checkpoint as run ``run_id``'s model ``model_id`` (``tracking.start_model``): the
    checkpoint, KTT's code (one zip, ``ktt/pyfunc_model.py`` loads it), the signature and an input
    example. Its environment is requirements/main.in constrained by the lock (main.txt). MLflow
    checks that the logged model answers its input example (it loads and runs it: half a second)
    and that this environment has the requirements: both once per model class, code, signature
    and requirements on this machine (:func:`_checked`), not on every fit. Returns MLflow's ``ModelInfo``."""
    import hashlib

    from mlflow.entities import LoggedModelOutput

    from .tracking.mlflow_compat import no_active_run

    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.json"
        info.write_text(json.dumps({"model": model_name, "depth": depth}))
        code = code_zip()
        reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements" / "main.in").read_text().splitlines()]
        sig = signature(depth)
        kwargs = dict(name="model", python_model=str(ROOT / "ktt" / "pyfunc_model.py"),
                      artifacts={"checkpoint": str(checkpoint), "info": str(info), "code": str(code)},
                      pip_requirements=[r for r in reqs if r] + [f"-c {ROOT / 'requirements' / 'main.txt'}"],
                      signature=sig, input_example=pd.DataFrame({"text": example}))
        key = hashlib.sha256(b"".join([model_name.encode(), code.read_bytes(), json.dumps(sig.to_dict()).encode(),
                                       "\n".join(reqs).encode()])).hexdigest()[:24]
        # linked here, not by ``Model.log`` (it would read every metric of the run back: no_active_run);
        # the model names its run in MLmodel (source_run_id)
        with no_active_run():
            logged = _checked(key, {**kwargs, "model_id": model_id, "source_run_id": run_id})
        mlflow.MlflowClient().log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        return logged


_zips: dict = {}  # (every file's path, size and mtime) -> the zip of them: a sweep's fits share one


def code_zip() -> Path:
    """KTT's code (``ktt/``, ``models/``) as one zip, written once per process while the code is unchanged."""
    import atexit
    import shutil
    import zipfile

    files = [f for package in ("ktt", "models") for f in sorted((ROOT / package).rglob("*"))
             if f.is_file() and "__pycache__" not in f.parts]
    key = tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])
    if key not in _zips or not _zips[key].exists():
        folder = Path(tempfile.mkdtemp(prefix="ktt-code-"))
        atexit.register(shutil.rmtree, folder, True)
        with zipfile.ZipFile(folder / "code.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.relative_to(ROOT))
        _zips.clear()
        _zips[key] = folder / "code.zip"
    return _zips[key]


def _checked(key: str, kwargs: dict):
    """``Model.log`` of the pyfunc flavor with ``kwargs``, MLflow's checks (input example, requirements)
    included the first time ``key`` is logged here and passed; afterwards the same model class, code,
    signature and requirements are logged without them (a marker under ``$XDG_CACHE_HOME/ktt``)."""
    import functools
    import os

    from mlflow.models import Model

    from .tracking.mlflow_compat import UncheckedPyfunc, log_model_checked

    marker = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ktt" / f"pyfunc-checked-{key}"
    log = functools.partial(Model.log, artifact_path=None, flavor=UncheckedPyfunc, flavor_name="mlflow.pyfunc", **kwargs)
    if marker.exists():
        return log(validate_serving_input=False)
    info, answered = log_model_checked(log)
    if answered:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # a read-only home: check every time
            pass
    return info
