"""On a CUDA machine: every encoder model trains with bf16 autocast and resumes exactly; full-data runs.

    python benchmarks/cuda_check.py --encoder PATH --out cuda.json              # on the GPU machine
    .venv/bin/python benchmarks/cuda_check.py --render cuda.json                # here: docs/benchmarks.md

1. Resume: each of the five encoder models trains 2 epochs straight, and again stopped after
   epoch 1 and resumed from its ``last_`` checkpoint (optimiser, schedule, CPU *and* CUDA RNG);
   the two final weights must be identical (deterministic CUDA kernels on). ``--resume-rows 0``
   skips it.
2. Full data: ``--runs model:epochs:batch,...`` on the deduplicated BigBasket training split,
   hyperparameters from ``hyperparameters.json`` otherwise, the best-validation checkpoint scored
   on the test split. No MLflow: it measures the models only.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import DATA, arguments, dataset, table, write_section  # noqa: E402

MODELS = ["db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]


def run(data: Path, encoder: str, runs: str, out: Path, device: str = "cuda", resume_rows: int = 1000) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    from ktt import registry
    from ktt.metrics import evaluate
    from ktt.model import NullLogger

    torch.use_deterministic_algorithms(True, warn_only=True)
    ds = dataset(data)
    h = ds.hierarchy
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else device, "torch": torch.__version__,
           "rows": [len(ds.train), len(ds.val), len(ds.test)], "resume": {}, "runs": []}

    class Saver(NullLogger):
        """Saves checkpoints like the tracked logger; raises after the first ``last_`` when asked to."""

        def __init__(self, folder, stop=False):
            self.folder, self.stop, self.paths, self.val = Path(folder), stop, {}, []

        def log_metrics(self, m, step=None):
            if "val_h_f1" in m:
                self.val.append(round(m["val_h_f1"], 4))
                print(f"    epoch {step}: val hF1 {m['val_h_f1']:.4f}", flush=True)

        def checkpoint(self, model, kind, state=None):
            self.paths[kind] = self.folder / f"{kind}.pt"
            model.save(self.paths[kind], state)
            if kind == "last" and self.stop:
                raise KeyboardInterrupt

    small, val = ds.train.head(resume_rows), ds.val.head(300)
    fast = {"epochs": 2, "batch_size": 32, "amp": True, "device": device, "encoder": encoder, "patience": 5}
    for name in MODELS if resume_rows else ():
        cls, params, tmp = registry.get(name), registry.params(name, fast), Path(tempfile.mkdtemp())
        t0 = time.time()
        straight = cls(h, **params).fit(small, val)
        try:
            cls(h, **params).fit(small, val, Saver(tmp, stop=True))
        except KeyboardInterrupt:
            pass
        resumed = cls.load(tmp / "last.pt")
        resumed.fit(small, val)
        a, b = straight.net_.state_dict(), resumed.net_.state_dict()
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        res["resume"][name] = {"identical": diff == 0.0, "max_abs_diff": diff, "seconds": round(time.time() - t0, 1)}
        print(name, "resume", res["resume"][name], flush=True)
        out.write_text(json.dumps(res, indent=1))

    torch.use_deterministic_algorithms(False)
    for spec in filter(None, runs.split(",")):
        name, epochs, batch = spec.split(":")
        cls = registry.get(name)
        params = registry.params(name, {"epochs": int(epochs), "patience": int(epochs), "batch_size": int(batch),
                                        "encoder": encoder, "device": device})
        print(spec, flush=True)
        logger = Saver(tempfile.mkdtemp())
        t0 = time.time()
        cls(h, **params).fit(ds.train, ds.val, logger)
        fit_s = time.time() - t0
        best = cls.load(logger.paths["best"])
        m = evaluate(h, ds.test.codes, best.predict(ds.test.texts))
        argmax = evaluate(h, ds.test.codes, h.decode_scores(best.predict_proba(ds.test.texts), "argmax"))
        res["runs"].append({"model": name, "epochs": int(epochs), "batch_size": int(batch), "fit_s": round(fit_s),
                            "val_h_f1": logger.val, **{k: round(float(v), 4) for k, v in m.items()},
                            "argmax_h_f1": round(argmax["h_f1"], 4),
                            "argmax_violation_rate": round(argmax["violation_rate"], 4)})
        print(res["runs"][-1], flush=True)
        out.write_text(json.dumps(res, indent=1))


def render(path: Path) -> None:
    res = json.loads(path.read_text())
    resume = [[n, "yes" if r["identical"] else "no", f"{r['max_abs_diff']:.2g}"] for n, r in res["resume"].items()]
    runs = [[r["model"], r["epochs"], r["batch_size"], *(f"{r[k]:.3f}" for k in (
        "L1_accuracy", "L2_accuracy", "L3_accuracy", "h_f1", "violation_rate", "argmax_h_f1", "argmax_violation_rate")),
        r["fit_s"]] for r in res["runs"]]
    write_section(
        "cuda-check", "## Encoder models on CUDA: bf16 autocast, exact resume, full data (issue 10)",
        "Command (on a GPU machine): `python benchmarks/cuda_check.py --encoder PATH --runs "
        + ",".join(f"{r['model']}:{r['epochs']}:{r['batch_size']}" for r in res["runs"])
        + " --out cuda.json`, then `.venv/bin/python benchmarks/cuda_check.py --render cuda.json`.",
        f"Device: {res['device']}, torch {res['torch']}, `amp` on (bf16 autocast). {res.get('note', '')}",
        "Resume: 2 epochs straight vs 1 epoch, stop, resume from the `last_` checkpoint (1000 training rows, "
        "deterministic CUDA kernels):",
        table(["model", "identical weights", "max abs difference"], resume),
        f"Full deduplicated BigBasket ({res['rows'][0]} training / {res['rows'][1]} validation / {res['rows'][2]} "
        "test rows), hyperparameters from `hyperparameters.json` but for epochs and batch; the best-validation "
        "checkpoint scored on test, default decoding (whole path) and, for comparison, per-level argmax:",
        table(["model", "epochs", "batch", "L1 acc", "L2 acc", "L3 acc", "hier. F1", "violation rate", "argmax hF1",
               "argmax violations", "train s"], runs))


if __name__ == "__main__":
    args = arguments(__doc__, ("--data", DATA), ("--encoder", "all-MiniLM-L6-v2"),
                     ("--runs", "db_bhcn:5:32,db_linear:5:32"), ("--out", Path("cuda.json")),
                     ("--device", "cuda", "cpu: a smoke test of this script"),
                     ("--resume-rows", 1000, "0: skip the resume check"),
                     ("--render", None, "write a results file into docs/benchmarks.md"))
    if args.render:
        render(Path(args.render))
    else:
        run(args.data, args.encoder, args.runs, args.out, args.device, args.resume_rows)
