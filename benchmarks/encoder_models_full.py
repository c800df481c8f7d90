"""The encoder models on the full deduplicated BigBasket training split, for as many epochs as they need.

    python benchmarks/encoder_models_full.py --models db_bhcn:10,db_ahmcnf:10 --out results.json
    python benchmarks/encoder_models_full.py --render results.json     # writes docs/benchmarks.md

Meant for a GPU (CUDA + bf16 autocast through the shared loop); on this repo's 2-core CI
machine one epoch of one model takes about 20 minutes. No MLflow: it measures the models only.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import bigbasket  # noqa: E402
from benchmarks.report import write_section  # noqa: E402



def run(models: str, data: Path, encoder: str | None, out: Path) -> None:
    import torch

    from ktt import registry
    from ktt.metrics import evaluate
    from ktt.model import NullLogger

    ds = bigbasket.load(data)
    h = ds.hierarchy

    class Progress(NullLogger):
        def log_metrics(self, m, step=None):
            if "val_h_f1" in m:
                print(f"  epoch {step}: val hF1 {m['val_h_f1']:.3f}", flush=True)

    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "rows": [len(ds.train), len(ds.val), len(ds.test)], "models": {}}
    for name, epochs in (m.split(":") for m in models.split(",")):
        cls = registry.get(name)
        params = registry.params(name, {"epochs": int(epochs), "patience": int(epochs),
                                        **({"encoder": encoder} if encoder else {})})
        start = time.time()
        model = cls(h, **params).fit(ds.train, ds.val, Progress())
        r = evaluate(h, ds.test.codes, model.predict(ds.test.texts))
        results["models"][name] = {"epochs": int(epochs), "fit_s": round(time.time() - start),
                                   **{k: round(float(v), 4) for k, v in r.items() if isinstance(v, (float, np.floating))}}
        print(name, results["models"][name], flush=True)
        out.write_text(json.dumps(results, indent=1))


def render(path: Path) -> None:
    res = json.loads(path.read_text())
    rows = [f"| {n} | {r['epochs']} | {r['L1_accuracy']:.3f} | {r['L2_accuracy']:.3f} | {r['L3_accuracy']:.3f} | "
            f"{r['L3_macro_f1']:.3f} | {r['h_f1']:.3f} | {r['violation_rate']:.3f} | {r['fit_s']} |"
            for n, r in res["models"].items()]
    write_section("encoder-full-bigbasket", "\n".join([
        "## Encoder models on the full training split, on a GPU (issue 3)", "",
        "Command: `python benchmarks/encoder_models_full.py --models db_achmcnn:10,db_bhcn:10,db_ahmcnf:10 "
        "--out results.json`, then `--render results.json`.", "",
        f"Deduplicated BigBasket, {res['rows'][0]} training / {res['rows'][1]} validation / {res['rows'][2]} test "
        f"rows, all-MiniLM-L6-v2, hyperparameters from `hyperparameters.json` but for the epochs; "
        f"the model of the last epoch is scored. Device: {res['device']} (bf16 autocast). "
        f"{res.get('note', '')}", "",
        "| model | epochs | L1 acc | L2 acc | L3 acc | L3 macro-F1 | hier. F1 | violation rate | train s |",
        "|---|---|---|---|---|---|---|---|---|", *rows]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="db_bhcn:10")
    ap.add_argument("--data", type=Path, default=bigbasket.DATA)
    ap.add_argument("--encoder", default=None, help="encoder path or name (default: hyperparameters.json)")
    ap.add_argument("--out", type=Path, default=Path("encoder_models_full.json"))
    ap.add_argument("--render", type=Path, default=None, help="write a results file into docs/benchmarks.md")
    args = ap.parse_args()
    render(args.render) if args.render else run(args.models, args.data, args.encoder, args.out)
