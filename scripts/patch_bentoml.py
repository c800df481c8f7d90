"""Make bentoml 0.13.1 import on Python 3.11 (run with the serving venv's python; idempotent).

1. ``bentoml/types.py`` uses instances as dataclass defaults, which 3.11 rejects:
   use ``field(default_factory=...)``.
2. Its vendored cloudpickle cannot pickle 3.11 code objects: re-export the real one.
"""
import re
import sys
from pathlib import Path

import importlib.util

spec = importlib.util.find_spec("bentoml")
if spec is None or not spec.submodule_search_locations:
    sys.exit("bentoml is not installed in this environment")
root = Path(spec.submodule_search_locations[0])

types_py = root / "types.py"
src = types_py.read_text()
patched = re.sub(r"(\w+): HTTPHeaders = HTTPHeaders\(\)", r"\1: HTTPHeaders = field(default_factory=HTTPHeaders)", src)
if patched != src:
    types_py.write_text(patched)

vendored = root / "utils" / "cloudpickle.py"
marker = "# patched by ktt: re-export the real cloudpickle\n"
if not vendored.read_text().startswith(marker):
    vendored.write_text(marker + "from cloudpickle import *  # noqa: F401,F403\n"
                        "from cloudpickle import CloudPickler, dump, dumps, load, loads  # noqa: F401\n")
print(f"patched {root}")
