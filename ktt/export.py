"""Export a trained model to ONNX and to a BentoML 0.13.1 service under ``build/<model>_<dataset>/``."""
from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import BadValue, NotFound, UserError
from .tracking import from_run, resolve_source, run_side

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def export_onnx(model, folder: Path, monitoring: bool = False) -> dict[str, Path]:
    """``encoder.onnx`` and ``classifier.onnx`` (TF-IDF models: ``tfidf.npz``, their sparse
    arrays) and ``serving.json`` (tokenisation, hierarchy, decoding, and whether the service
    forwards rows to the drift sidecar)."""
    from .serving.runtime import exported_files, graph_files

    folder.mkdir(parents=True, exist_ok=True)
    paths = graph_files(folder)
    for f in paths.values():  # a re-export may change the format
        f.unlink(missing_ok=True)
    if model.served_from == "arrays":
        model.export_arrays(paths["arrays"])
    else:
        model.export_onnx(paths["classifier"], paths["encoder"])
    paths["config"].write_text(json.dumps({**model.serving_config(), "monitoring": monitoring}))
    return exported_files(folder)


def quantize_int8(src: Path, dst: Path) -> dict[str, Path]:
    """Quantized copies of ``src``'s export in ``dst``. Graphs: dynamically quantized, int8
    weights for every MatMul and Gemm (the encoder's layers), activations quantized at run time.
    TF-IDF arrays: int8 weights with one scale per decision (``ktt.sparse.quantize``)."""
    from .serving.runtime import exported_files, graph_files

    dst.mkdir(parents=True, exist_ok=True)
    given, out = exported_files(src), graph_files(dst)
    if "arrays" in given:
        import numpy as np

        from .sparse import quantize

        with np.load(given["arrays"]) as f, open(out["arrays"], "wb") as o:
            np.savez(o, **quantize(dict(f)))
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for part in ("encoder", "classifier"):
            quantize_dynamic(given[part], out[part], weight_type=QuantType.QInt8)
    shutil.copy(given["config"], out["config"])
    return exported_files(dst)


def graph_metrics(folder: Path, split, batch_size: int = 256) -> dict[str, float]:
    """Per-level accuracy, hierarchical F1 and the rest of ``evaluate`` for the graphs in ``folder``."""
    import numpy as np

    from .metrics import evaluate
    from .serving.runtime import Predictor

    pred = Predictor.from_dir(folder)
    codes = np.concatenate([pred.predict(split.texts[i:i + batch_size]).codes
                            for i in range(0, len(split), batch_size)])
    return evaluate(split.hierarchy, split.codes, codes)


def check_quantized(onnx_dir: Path, int8_dir: Path, split, max_drop: float) -> dict:
    """Both graphs' test metrics; ValueError when int8 loses more than ``max_drop`` points of hF1."""
    fp32, int8 = graph_metrics(onnx_dir, split), graph_metrics(int8_dir, split)
    keys = [k for k in fp32 if k.endswith("_accuracy") or k == "h_f1"]
    report = {"float": {k: round(fp32[k], 4) for k in keys}, "int8": {k: round(int8[k], 4) for k in keys},
              "rows": len(split), "max_drop_points": max_drop}
    drop = 100 * (fp32["h_f1"] - int8["h_f1"])
    if drop > max_drop:
        raise BadValue(f"the int8 graphs lose {drop:.2f} points of test hF1 ({fp32['h_f1']:.4f} -> "
                         f"{int8['h_f1']:.4f}), more than --max-drop {max_drop}; the service was not built "
                         "(serve the float graphs, or raise --max-drop)")
    return report


def check_promotable(run_id: str) -> None:
    """Refuse to register a run whose model a client could not use: the run must have FINISHED
    (a killed fit stays RUNNING) and not be deleted, its logged model be READY (not PENDING or
    FAILED), and that model must load and answer a text as ``ktt predict`` would."""
    import mlflow.pyfunc

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if run.info.lifecycle_stage == "deleted":
        raise BadValue(f"run {run_id} is deleted; restore it first (mlflow runs restore) to register it")
    if run.info.status != "FINISHED":
        raise BadValue(f"run {run_id} is {run.info.status}, not FINISHED: only a finished fit can be registered "
                       "(a fit that was killed stays RUNNING)")
    logged = []
    for out in run.outputs.model_outputs if run.outputs else []:
        try:
            logged.append(client.get_logged_model(out.model_id))
        except Exception:  # deleted since: not one to register
            continue
    model = next((m for m in logged if m.name == "model"), None)
    if model is None:
        raise BadValue(f"run {run_id} has no logged model to register (none was logged, or it was deleted)")
    status = getattr(model.status, "name", str(model.status))
    if status != "READY":
        raise BadValue(f"run {run_id}'s logged model is {status}, not READY: its fit did not finish logging it")
    try:
        import pandas as pd

        mlflow.pyfunc.load_model(f"models:/{model.model_id}").predict(pd.DataFrame({"text": ["a title to check"]}))
    except UserError as e:
        raise BadValue(f"run {run_id}'s logged model does not load: {e}") from None
    except Exception as e:  # a missing or damaged artifact: MLflow's and the loader's own errors
        why = " ".join(str(e).split())[:300]
        raise BadValue(f"run {run_id}'s logged model does not load and answer: {type(e).__name__}: {why}") from None


def register(run_id: str, name: str, alias: str = "champion", taxonomy: str | None = None) -> int:
    """Register the run's logged pyfunc model as ``name`` (tagged with its ``taxonomy`` version)
    and point ``alias`` at the new version."""
    import mlflow

    version = mlflow.register_model(f"runs:/{run_id}/model", name, tags={"ktt.taxonomy": taxonomy} if taxonomy else None)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def promotion_diff(run_id: str, taxonomy: str, name: str, alias: str):
    """The taxonomy diff from the version ``name@alias`` holds now to ``run_id``'s, or None when
    no version holds the alias or both answer in the same taxonomy (``taxonomy``: the run's) and
    their rows say no class was renamed or moved (the same paths can hold other classes: two names
    swapped)."""
    import mlflow

    from . import taxonomy as tx

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except Exception:  # no such model or alias yet: nothing to compare with
        return None
    held = mv.tags.get("ktt.taxonomy") or (client.get_run(mv.run_id).data.tags.get("ktt.taxonomy") if mv.run_id else None)
    if held is None and mv.run_id:  # registered before taxonomy versions: its checkpoint's hierarchy
        old = from_run(mv.run_id)
        from . import registry
        held = tx.digest(registry.get(old.model).load(old.checkpoint).hierarchy)
    change = tx.diff(_side(mv.run_id, f"{name} v{mv.version}"), _side(run_id, f"run {run_id[:8]}"))
    # the same paths: only a rename or move (names swapped) changes what clients see; a class whose
    # every row was corrected away and that holds new rows is reported removed and added, at one path
    return change if held != taxonomy or any(c.kind in ("renamed", "moved") for c in change.changes) else None


def _side(run_id: str, name: str):
    """A run's taxonomy side; a run from before taxonomy versions: its checkpoint's hierarchy, no rows."""
    from . import registry, taxonomy as tx

    try:
        return run_side(run_id, name)
    except NotFound:
        src = from_run(run_id)
        return tx.Side(name, registry.get(src.model).load(src.checkpoint).hierarchy)


def taxonomy_side(ref: str, datasets_root="datasets"):
    """The taxonomy (``ktt.taxonomy.Side``) of a dataset (name or folder), an MLflow run (ID or
    ``runs:/ID``) or a registered model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""
    from . import taxonomy as tx
    from .data import load_dataset
    from .tracking import RUN_ID

    if ref.startswith(("runs:/", "models:/")) or (RUN_ID.match(ref) and not (Path(datasets_root) / ref).exists()):
        return _side(resolve_source(ref).run_id, ref)
    try:
        return tx.of_dataset(load_dataset(ref, datasets_root))
    except NotFound:
        raise NotFound(f"{ref!r} is neither a dataset (in {datasets_root}) nor a run ID, runs:/ or models:/ URI") from None


SERVICE_TEMPLATE = '''"""BentoService of `{model}`, written by `ktt export`: the shared KTT API
(ktt/serving/bento.py) over this model's {what}."""
import bentoml

from ktt.serving.bento import SERVING_ENV, {base}


@bentoml.env(**SERVING_ENV)
class {service}({base}):
    pass


SERVICE = {service}
'''


def service_files(model_cls, folder: Path) -> dict[str, Path]:
    """The spec's per-model ``bentoml/`` folder, generated: ``svc_lts.py`` (the BentoService, a class
    named after the model class), ``evidently.yaml`` (the drift sidecar's template) and
    ``dashboard.json`` (Grafana). A file of the same name in ``models/<name>/bentoml/`` overrides
    the generated one (an override of ``svc_lts.py`` keeps the class name)."""
    from .monitoring.build import evidently_template
    from .monitoring.dashboard import dashboard

    service, name = model_cls.__name__, model_cls.name
    base, what = ("TfidfService", "sparse arrays") if model_cls.served_from == "arrays" else ("KTTService", "ONNX graphs")
    generated = {"svc_lts.py": SERVICE_TEMPLATE.format(model=name, service=service, base=base, what=what),
                 "evidently.yaml": evidently_template(model_cls.drift_share),
                 "dashboard.json": json.dumps(dashboard(service, name), indent=2) + "\n",
                 "__init__.py": ""}
    own = Path(inspect.getfile(model_cls)).parent / "bentoml"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {file: folder / file for file in generated}
    for file, text in generated.items():
        if (own / file).is_file():
            shutil.copy(own / file, paths[file])
        else:
            paths[file].write_text(text)
    return paths


def build_bento(svc_file: Path, onnx_dir: Path, out: Path) -> Path:
    """Build the BentoService in the serving environment (the main one never imports bentoml)."""
    from .serving import serving_python

    py = serving_python()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
           "PYTHONPATH": str(ROOT)}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    # absolute: the build runs in KTT's folder, not the caller's
    proc = subprocess.run([py, "-m", "ktt.serving.build", *(str(Path(p).resolve()) for p in (svc_file, onnx_dir, out))],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"building the BentoService failed:\n{proc.stderr[-3000:]}")
    return out


def export(source: str | None = None, *, model: str | None = None, dataset: str | None = None,
           onnx: bool = True, bento: bool = False, monitoring: bool = False, register_as: str | None = None,
           alias: str = "champion", allow_taxonomy_change: bool = False, quantize: str | None = None,
           max_drop: float = 0.5,
           build_root: str | os.PathLike = "build", weights_root: str | os.PathLike = "weights",
           datasets_root: str | os.PathLike = "datasets") -> dict:
    """Export; returns what was built. The export is logged to the source run when there is one.

    ``quantize="int8"`` also writes dynamically quantized graphs (``onnx-int8/``), reports both
    graphs' accuracy on the dataset's test split, and serves the int8 graphs unless they lose more
    than ``max_drop`` points of hierarchical F1 (then it refuses, before building anything more).
    ``register_as`` refuses, before building anything, a run whose taxonomy differs from the
    version holding ``alias`` (the error shows the diff) unless ``allow_taxonomy_change``.
    """
    from . import registry
    from .taxonomy import digest

    if quantize not in (None, "int8"):
        raise BadValue(f"--quantize must be int8, not {quantize!r}")
    if max_drop < 0:
        raise BadValue(f"--max-drop must be at least 0, not {max_drop}")
    src = resolve_source(source, model, dataset, weights_root)
    est = registry.get(src.model).load(src.checkpoint)
    final = Path(build_root) / f"{src.model}_{src.dataset}"
    built: dict = {"model": src.model, "dataset": src.dataset, "taxonomy": digest(est.hierarchy),
                   "checkpoint": str(src.checkpoint), "build": str(final)}
    if register_as and not src.run_id:
        raise BadValue("--register needs an MLflow run as the source, not a weights/ checkpoint")
    if register_as and src.run_id:
        check_promotable(src.run_id)
        change = promotion_diff(src.run_id, built["taxonomy"], register_as, alias)
        if change is not None and not allow_taxonomy_change:
            raise BadValue(f"models:/{register_as}@{alias} answers in another taxonomy than this run"
                           f"{' (the same paths, other classes)' if change.same else ''}:\n{change}\n"
                           "pass --allow-taxonomy-change to move the alias anyway (clients will see these categories "
                           "change)")
        if change is not None:
            built["taxonomy_change"] = str(change)
    from .data import claim_name

    final.parent.mkdir(parents=True, exist_ok=True)
    with claim_name(final.parent, final.name, f"{final} is being exported by another process right now; "
                                              "run this one when it has finished"):
        # built beside the previous build, which stays whole until the new one is
        out = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            onnx_dir = out / "onnx"
            if onnx or bento or monitoring or quantize:
                built["onnx"] = {k: str(v) for k, v in export_onnx(est, onnx_dir, monitoring).items()}
            served_dir = onnx_dir
            if quantize:
                from .data import load_dataset

                served_dir = out / "onnx-int8"
                built["onnx_int8"] = {k: str(v) for k, v in quantize_int8(onnx_dir, served_dir).items()}
                test = load_dataset(src.dataset, datasets_root).test
                built["quantization"] = check_quantized(onnx_dir, served_dir, test, max_drop)
                if src.run_id:
                    import mlflow

                    mlflow.MlflowClient().log_dict(src.run_id, built["quantization"], "onnx-int8/quantization.json")
            if bento or monitoring:
                files = service_files(type(est), out / "bentoml")
                built["inference"] = str(build_bento(files["svc_lts.py"], served_dir, out / "inference"))
            if monitoring:
                from .monitoring.build import build_monitoring
                built.update(build_monitoring(est, src, out, files, datasets_root))
            _swap_in(out, final)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise _no_space(final, e) from None
        except RuntimeError as e:  # the serving build's own report of a full disk
            if "No space left on device" not in str(e):
                raise
            raise _no_space(final, e) from None
        finally:
            shutil.rmtree(out, ignore_errors=True)
    built = json.loads(json.dumps(built).replace(json.dumps(str(out))[1:-1], json.dumps(str(final))[1:-1]))
    if src.run_id:
        import mlflow

        client = mlflow.MlflowClient()
        for f in (final / "onnx").glob("*") if "onnx" in built else ():
            client.log_artifact(src.run_id, str(f), "onnx")
        client.set_tag(src.run_id, "ktt.export", json.dumps(built))
        if register_as:
            built["registered"] = f"models:/{register_as}@{alias}"
            built["version"] = register(src.run_id, register_as, alias, built["taxonomy"])
    return built


def _swap_in(new: Path, final: Path) -> None:
    """Each top-level entry of ``new`` replaces ``final``'s of that name (what this export did not
    build, an earlier one's ``inference/`` say, stays); the replaced ones go into ``new``, which
    the caller removes."""
    final.mkdir(exist_ok=True)
    for entry in sorted(new.iterdir()):
        if entry.name.startswith(".old-"):
            continue
        dest = final / entry.name
        if dest.exists():
            dest.rename(new / f".old-{entry.name}")
        entry.rename(dest)


def _no_space(final: Path, e: Exception):
    from .errors import Unavailable

    free = shutil.disk_usage(final.parent).free / 1e6
    last = sum(f.stat().st_size for f in final.rglob("*") if f.is_file()) / 1e6 if final.exists() else 0
    why = e.strerror if isinstance(e, OSError) and e.strerror else "No space left on device"
    return Unavailable(f"cannot write the export to {final}: {why} ({free:.0f} MB free there"
                       + (f"; the previous build there takes {last:.0f} MB" if last else "")
                       + "); the previous build is intact")
