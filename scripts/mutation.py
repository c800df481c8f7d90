"""Run mutmut over the core formulas (issue 17's scope) and print the score.

The scope is by function, not by file: the modules also hold serving and monitoring plumbing
that only the slow end-to-end tests reach. Usage: ``make mutation`` (or ``python
scripts/mutation.py [--report-only]`` from the repo root, with KTT_SHARED_DATA set).
"""
import collections
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

# mutmut names a function's mutants <module>.x_<function>__mutmut_N and a method's
# <module>.xǁ<Class>ǁ<method>__mutmut_N.
SCOPE = [
    "ktt.metrics.*",
    "ktt.hierarchy.*",
    "ktt.serving.requests.x_parse_request__*",
    "ktt.monitoring.sidecar.x_is_drift__*",
    "ktt.monitoring.sidecar.x_alert_signals__*",
    "ktt.serving.requests.x_parse_thresholds__*",
    "ktt.experiment.x_rank__*",
    "ktt.experiment.x_lower_is_better__*",
    "models.*.x_*",  # the losses and score functions each model defines at module level
    "models.*ǁloss__*",
    "models.*ǁlevel_scores__*",
    "models.*ǁ_log_y__*",
    "models.*ǁ_parents__*",
]


def results(root: Path = Path("mutants")) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in root.rglob("*.meta"):
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(key, p) for p in SCOPE):
                out[key] = status_by_exit_code[code]
    return out


def report(res: dict[str, str]) -> int:
    counts = collections.Counter(res.values())
    detected = counts["killed"] + counts["timeout"]
    checked = sum(counts.values()) - counts["not checked"] - counts["skipped"]
    print(f"mutants in scope: {len(res)}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if checked:
        print(f"score (killed or timed out / checked): {detected}/{checked} = {detected / checked:.1%}")
    for key, status in sorted(res.items()):
        if status not in ("killed", "timeout", "not checked", "skipped"):
            print(f"  {status}: {key}")
    return 0 if checked and detected / checked >= 0.9 else 1


def main() -> int:
    if "--report-only" not in sys.argv:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "2", *SCOPE], check=False)
    return report(results())


if __name__ == "__main__":
    sys.exit(main())
