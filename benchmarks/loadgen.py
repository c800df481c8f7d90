"""Closed-loop HTTP load from its own process: N client threads, each with a keep-alive session.

    python benchmarks/loadgen.py URL TEXTS_JSON --concurrency 8 --seconds 10 [--batch 64]
Prints one JSON line: answered (200) requests/s and titles/s, their p50/p99 latency in ms, errors
(every other answer), and the count of each status (429 and 503 are shed requests). ``--batch N``:
each request carries N titles (``{"text": [...]}``).
"""
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments  # noqa: E402


def main():
    args = arguments(__doc__, ("url",), ("texts",), ("--concurrency", 1), ("--seconds", 10.0),
                     ("--batch", 0, "titles per request (0: one title, not a list)"))
    texts = json.load(open(args.texts))
    lat, errors, statuses, lock = [], [0], {}, threading.Lock()
    stop = time.perf_counter() + args.seconds

    def client(k):
        s, i = requests.Session(), k
        while time.perf_counter() < stop:
            body = json.dumps({"text": [texts[(i + j) % len(texts)] for j in range(args.batch)] if args.batch
                               else texts[i % len(texts)]})
            t0 = time.perf_counter()
            r = s.post(args.url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt) if r.status_code == 200 else errors.__setitem__(0, errors[0] + 1)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            i += args.concurrency * max(args.batch, 1)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.concurrency)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    print(json.dumps({"rps": len(lat) / wall, "titles_per_s": len(lat) * max(args.batch, 1) / wall,
                      "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                      "errors": errors[0], "requests": len(lat), "statuses": statuses}))


if __name__ == "__main__":
    main()
