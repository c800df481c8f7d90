"""Run an experiment file (``ktt experiment``: one MLflow experiment, each model a run) and write
its per-level table into docs/benchmarks.md. Runs go to a temporary SQLite store unless
MLFLOW_TRACKING_URI is set.

    .venv/bin/python benchmarks/experiment_table.py experiments/clinc150.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments, table, workdir, write_section  # noqa: E402


def main() -> None:
    path = arguments(__doc__, ("path", None, "the experiment file")).path
    from ktt.compare import format_interval
    from ktt.experiment import load_spec, run_experiment

    tmp = workdir("exp", tracking=True)
    spec = load_spec(path)
    _, rows = run_experiment(path, datasets_root=tmp / "datasets", weights_root=tmp / "weights")
    levels = range(1, 1 + max(int(k[len("test_L"):].split("_")[0]) for k in rows[0] if k.startswith("test_L")))
    refs = {r["vs_model"] for r in rows if "vs_model" in r}

    def cell(r, key, digits=3):  # mean ± sd over the seeds when there are several
        return f"{r[key]:.{digits}f}" + (f" ± {r[key + '_sd']:.{digits}f}" if len(r["runs"]) > 1 else "")

    def ci(r, m):
        if "vs" in r:
            return format_interval(r["vs"][m])
        return "(reference)" if any(x.get("vs_model") == r["model"] for x in rows) else ""
    vs = (["against", "hF1 difference [95% CI]", "leaf acc difference [95% CI]"] if len(refs) > 1 else
          [f"hF1 - {next(iter(refs))} [95% CI]", f"leaf acc - {next(iter(refs))} [95% CI]"] if refs else [])
    head = ["model", "seeds", *(f"L{i} acc" for i in levels), *(f"L{i} macro-F1" for i in levels), "hier. F1",
            "leaf acc", "violation rate", "train s", *vs]
    cells = [[r["model"] + (" (tuned)" if r["tuned"] else ""), ",".join(map(str, r["seeds"])),
              *(cell(r, f"test_L{i}_accuracy") for i in levels), *(cell(r, f"test_L{i}_macro_f1") for i in levels),
              cell(r, "test_h_f1", 4), cell(r, "test_leaf_accuracy", 4), f"{r['test_violation_rate']:.3f}",
              f"{r['train_time_s']:.0f}", *([r.get("vs_model", "")] if len(refs) > 1 else []),
              *([ci(r, "h_f1"), ci(r, "leaf_accuracy")] if refs else [])] for r in rows]
    seeds = ["Mean ± sample sd over each model's seeds (train s: the mean); intervals: paired bootstrap over the "
             "seeds both models ran, the model minus its reference (2,000 resamples of the test texts, the same "
             "draw for every seed of both)."] if any(len(r["runs"]) > 1 for r in rows) else []
    write_section(f"experiment-{spec['name']}", f"## Experiment `{spec['name']}`",
                  f"Command: `.venv/bin/python benchmarks/experiment_table.py {path}` (the same runs as "
                  f"`ktt experiment {path}`; ranked by {spec['rank_by']}).",
                  " ".join(str(spec.get("description", "")).split()), table(head, cells), *seeds)


if __name__ == "__main__":
    main()
