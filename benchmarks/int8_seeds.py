"""What int8 costs in accuracy, over seeds (issue 27): tfidf_hsgd and db_bhcn, float graphs against
int8 (``export_onnx``, then ``quantize_int8`` as ``ktt export --quantize int8`` does), both scoring the
test split through the serving runtime. db_bhcn: about 3 minutes an epoch on a 2-core CPU.

    .venv/bin/python benchmarks/int8_seeds.py [--epochs 1] [--seeds 0,1,2] [--tfidf-seeds 0,1,2,3,4]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments, bigbasket, paired, spread, table, workdir, write_section  # noqa: E402


def graph_paths(folder: Path, texts, batch_size: int = 256) -> np.ndarray:
    from ktt.serving.runtime import Predictor

    pred = Predictor.from_dir(folder)
    return np.concatenate([pred.predict(texts[i:i + batch_size]).codes for i in range(0, len(texts), batch_size)])


def main() -> None:
    args = arguments(__doc__, ("--epochs", 1, "db_bhcn's fine-tuning epochs per seed"),
                     ("--seeds", "0,1,2", "db_bhcn's seeds"), ("--tfidf-seeds", "0,1,2,3,4", "tfidf_hsgd's seeds"))
    from ktt import registry
    from ktt.compare import format_interval
    from ktt.export import export_onnx, quantize_int8
    from ktt.metrics import evaluate

    ds = bigbasket()
    h, test = ds.hierarchy, ds.test
    tmp = workdir("int8")
    rows = []
    for name, seeds, over in (("tfidf_hsgd", args.tfidf_seeds, {}), ("db_bhcn", args.seeds, {"epochs": args.epochs})):
        seeds = [int(s) for s in seeds.split(",")]
        paths = {"float": [], "int8": []}
        for seed in seeds:
            model = registry.create(name, h, seed=seed, **over).fit(ds.train, ds.val)
            out = tmp / f"{name}-{seed}"
            export_onnx(model, out / "float")
            quantize_int8(out / "float", out / "int8")
            for graphs in paths:
                paths[graphs].append(graph_paths(out / graphs, test.texts))
            print(name, seed, {g: round(evaluate(h, test.codes, p[-1])["h_f1"], 4) for g, p in paths.items()}, flush=True)
        m = {g: [evaluate(h, test.codes, p) for p in ps] for g, ps in paths.items()}
        ci = paired(h, test.codes, paths["float"], paths["int8"])
        both = lambda k: " / ".join(spread([r[k] for r in m[g]], "{:.4f}") for g in m)  # noqa: E731
        drops = [100 * (a["h_f1"] - b["h_f1"]) for a, b in zip(m["float"], m["int8"])]
        label = name + (f" ({args.epochs} fine-tuned epoch{'s' * (args.epochs > 1)})" if name == "db_bhcn" else "")
        rows.append([label, ",".join(map(str, seeds)), both("L1_accuracy"), both("leaf_accuracy"), both("h_f1"),
                     ", ".join(f"{d:+.2f}" for d in drops), format_interval(ci["h_f1"]),
                     format_interval(ci["leaf_accuracy"])])
        print(rows[-1], flush=True)
    write_section(
        "int8-seeds", "## What int8 costs in accuracy, over seeds (issue 27)",
        "Command: `.venv/bin/python benchmarks/int8_seeds.py`",
        f"Deduplicated BigBasket, official split ({len(ds.train)} training / {len(test)} test rows). Per seed: fit, "
        "`export_onnx`, `quantize_int8` (what `ktt export --quantize int8` serves), both graph sets scoring the "
        f"test split through the serving runtime. db_bhcn: all-MiniLM-L6-v2 fine-tuned for {args.epochs} "
        "epoch(s) of the full training split, what fits three seeds on this 2-core CPU. Float / int8 as mean ± "
        "sd over the seeds; the int8 - float interval is a paired bootstrap, seeds pooled (2,000 resamples of "
        "the test texts, the same draw for every seed of both graph sets).",
        table(["model", "seeds", "L1 acc float / int8", "leaf acc float / int8", "hF1 float / int8",
               "hF1 drop per seed, points", "hF1 int8 - float [95% CI]", "leaf acc int8 - float [95% CI]"], rows))


if __name__ == "__main__":
    main()
