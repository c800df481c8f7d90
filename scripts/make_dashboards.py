"""Write models/<name>/bentoml/dashboard.json for every model with a BentoService."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ktt.monitoring.dashboard import dashboard  # noqa: E402


def service_class(svc: Path) -> str:
    found = re.search(r"^class (\w+)\(KTTService\)", svc.read_text(), re.M)
    if not found:
        raise SystemExit(f"{svc}: no `class <Name>(KTTService)`")
    return found.group(1)


if __name__ == "__main__":
    for svc in sorted(ROOT.glob("models/*/bentoml/svc_lts.py")):
        model = svc.parent.parent.name
        out = svc.parent / "dashboard.json"
        out.write_text(json.dumps(dashboard(service_class(svc), model), indent=2) + "\n")
        print(out.relative_to(ROOT))
