"""Build a model's BentoService from its exported graphs (run in the serving environment).

    python -m ktt.serving.build MODEL ONNX_DIR OUT_DIR
"""
import importlib
import json
import sys
from pathlib import Path


def main(model: str, onnx_dir: str, out: str) -> None:
    module = importlib.import_module(f"models.{model}.bentoml.svc_lts")
    svc = module.SERVICE()
    onnx_dir = Path(onnx_dir)
    svc.pack("encoder", str(onnx_dir / "encoder.onnx"))
    svc.pack("classifier", str(onnx_dir / "classifier.onnx"))
    svc.pack("config", json.loads((onnx_dir / "serving.json").read_text()))
    Path(out).mkdir(parents=True, exist_ok=True)
    svc.save_to_dir(out)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
