"""Make bentoml 0.13.1 import on Python 3.11 (run with the serving venv's python; idempotent).

1. ``bentoml/types.py`` uses instances as dataclass defaults, which 3.11 rejects:
   use ``field(default_factory=...)``.
2. Its vendored cloudpickle cannot pickle 3.11 code objects: re-export the real one.
3. Its micro-batching front server answers a body over ``max_request_size`` with an empty 500:
   answer aiohttp's own 413 (a client mistake).
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
marshal = root / "marshal" / "marshal.py"
src = marshal.read_text()
too_large = ("            except __import__('aiohttp').web.HTTPRequestEntityTooLarge as e:  # patched by ktt\n"
             "                resp = Response(status=e.status, text=e.text)\n")
if too_large not in src:
    anchor = "            except asyncio.CancelledError:\n                resp = Response(status=503)\n"
    if anchor not in src:
        sys.exit(f"{marshal}: the code to patch is not there (another bentoml version?)")
    marshal.write_text(src.replace(anchor, anchor + too_large, 1))
print(f"patched {root}")
