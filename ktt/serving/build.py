"""Build a model's BentoService from its exported graphs (run in the serving environment).

    python -m ktt.serving.build SVC_LTS_PY ONNX_DIR OUT_DIR

``SVC_LTS_PY`` is the service module ``ktt export`` wrote (``build/<model>_<dataset>/bentoml/``).
"""
import importlib
import json
import shutil
import sys
from pathlib import Path

from ktt.serving.runtime import exported_files, load_arrays

PATCH = Path(__file__).resolve().parents[2] / "scripts" / "patch_bentoml.py"
# bentoml 0.13.1 needs the same Python 3.11 patch in the image as in the serving venv.
DOCKER_PATCH = """
COPY --chown=bentoml:bentoml patch_bentoml.py ./
RUN python patch_bentoml.py
ENV BENTOML_DO_NOT_TRACK=true PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
"""
INSTALL_STEP = "RUN ./bentoml-init.sh install_pip_packages\n"


def main(svc_file: str, onnx_dir: str, out: str) -> None:
    # imported as a top-level module from its own folder: BentoML copies it (and the ktt modules
    # it imports) into the bundle under that name
    sys.path.insert(0, str(Path(svc_file).resolve().parent))
    module = importlib.import_module(Path(svc_file).stem)
    svc = module.SERVICE()
    files = exported_files(onnx_dir)
    if "arrays" in files:
        svc.pack("arrays", load_arrays(files["arrays"]))
    else:
        svc.pack("encoder", str(files["encoder"]))
        svc.pack("classifier", str(files["classifier"]))
    svc.pack("config", json.loads(files["config"].read_text()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    svc.save_to_dir(str(out))
    shutil.copy(PATCH, out / "patch_bentoml.py")
    dockerfile = out / "Dockerfile"
    text = dockerfile.read_text()
    if INSTALL_STEP not in text:
        raise RuntimeError("unexpected BentoML Dockerfile: no pip install step to patch after")
    dockerfile.write_text(text.replace(INSTALL_STEP, INSTALL_STEP + DOCKER_PATCH, 1))
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
