"""Patch bentoml 0.13.1 for Python 3.11 and for honest serving (run with the serving venv's python; idempotent).

1. ``bentoml/types.py`` uses instances as dataclass defaults, which 3.11 rejects:
   use ``field(default_factory=...)``.
2. Its vendored cloudpickle cannot pickle 3.11 code objects: re-export the real one.
3. Its micro-batching front server answers a body over ``max_request_size`` with an empty 500:
   answer aiohttp's own 413 (a client mistake).
4. Its prediction log pairs each request with the wrong result once one request of a batch was
   discarded (a 400 logged as a 200 with another request's answer): pair every request with the
   result its client received.
5. Readiness: the model server answers ``GET /readyz`` from the service's ``readiness()`` (if it
   has one: status and JSON); the front server polls it from start-up, and a batched request that
   arrives before it is ready waits up to 1 s for it, then gets 503. On the first 200 every
   micro-batcher's cost model is seeded with the batch times the service measured while warming
   up (BentoML starts from 2 s a request plus 1 s, so a cold server sheds nearly every concurrent
   request until it has learned). Its own ``/readyz`` says whether it is ready.
6. Shedding: a shed request gets 429 (over the latency budget) or 503 (not ready) with
   ``Retry-After``, counted in ``<service>_mb_shed_total{endpoint, reason}``.
7. ``serve-gunicorn``'s model server (one sync worker, behind the front server) listens on
   127.0.0.1, not on every interface: a client that opens it and sends nothing would hold its
   only worker; only the front server, on this machine, talks to it.
8. ``max_request_size`` 8 MiB, not 20 MB: the service's own body limit
   (``ktt.serving.requests.MAX_BODY_BYTES``); a bigger body gets 413 from the front server
   before it joins a micro-batch, where three clients sending 19 MB bodies made good requests in
   the same batches time out (408).
"""
import re
import sys
from pathlib import Path

import importlib.util

spec = importlib.util.find_spec("bentoml")
if spec is None or not spec.submodule_search_locations:
    sys.exit("bentoml is not installed in this environment")
root = Path(spec.submodule_search_locations[0])


def patch(path: Path, anchor: str, new: str, replace: bool = False) -> None:
    """Put ``new`` after ``anchor`` (or in its place) in ``path``, once."""
    src = path.read_text()
    if new in src:
        return
    if anchor not in src:
        sys.exit(f"{path}: the code to patch is not there (another bentoml version?)")
    path.write_text(src.replace(anchor, new if replace else anchor + new, 1))


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
patch(marshal, "            except asyncio.CancelledError:\n                resp = Response(status=503)\n",
      "            except __import__('aiohttp').web.HTTPRequestEntityTooLarge as e:  # patched by ktt\n"
      "                resp = Response(status=e.status, text=e.text)\n")

# 4. the prediction log: results of every task, discarded ones included, in task order
inference_api = root / "service" / "inference_api.py"
patch(inference_api, "        full_results = InferenceResult.complete_discarded(inf_tasks, inf_results)\n",
      "        full_results = tuple(InferenceResult.complete_discarded(inf_tasks, inf_results))  # patched by ktt\n",
      replace=True)
patch(inference_api, "        for task, result in zip(inf_tasks, inf_results):\n",
      "        for task, result in zip(inf_tasks, full_results):  # patched by ktt: each request's own result\n",
      replace=True)

# 5. the model server's /readyz
api_server = root / "server" / "api_server.py"
patch(api_server, '        self.app.add_url_rule("/healthz", "healthz", self.healthz_view_func)\n',
      '        self.app.add_url_rule("/readyz", "readyz", partial(_ktt_readyz, self.bento_service))  # patched by ktt\n')
patch(api_server, "\n\nclass BentoAPIServer:", '''

def _ktt_readyz(bento_service):  # patched by ktt
    """Readiness, separate from liveness: the service's ``readiness()`` (status, JSON), else 200."""
    import json

    status, body = bento_service.readiness() if hasattr(bento_service, "readiness") else (200, {})
    return Response(response=json.dumps(body), status=status, mimetype="application/json",
                    headers={} if status == 200 else {"Retry-After": "1"})


class BentoAPIServer:''', replace=True)

# 5, 6. the front server: readiness, seeded cost model, shedding with Retry-After
patch(marshal, "import asyncio\n", "import math  # patched by ktt\n")
patch(marshal, "            self.metrics_request_total = Counter(\n", '''            self.metrics_request_shed = Counter(  # patched by ktt
                name=service_name + "_mb_shed_total",
                documentation=service_name + " requests shed by the micro-batcher (429/503 with Retry-After)",
                namespace=namespace,
                labelnames=['endpoint', 'reason'],
            )
            for _api in self.ktt_dispatchers:
                for _reason in ("not_ready", "over_latency_budget"):
                    self.metrics_request_shed.labels(endpoint=_api, reason=_reason)
            self.metrics_request_total = Counter(
''', replace=True)
patch(marshal, "                fallback=HTTPTooManyRequests,\n",
      "                fallback=functools.partial(self.ktt_shed, api_route, \"over_latency_budget\"),  # patched by ktt\n",
      replace=True)
patch(marshal, "            self.cleanup_tasks.append(dispatcher.shutdown)\n",
      "            self.ktt_dispatchers[api_route] = dispatcher  # patched by ktt\n")
patch(marshal, "        self.batch_handlers = dict()\n", "        self.ktt_dispatchers = dict()  # patched by ktt\n")
patch(marshal, "        app.on_cleanup.append(self.cleanup)\n", "        app.on_startup.append(self.ktt_start_polling)  # patched by ktt\n")
patch(marshal, '''            api_route = request.match_info.get("path")
            if api_route in self.batch_handlers:
''', '''            api_route = request.match_info.get("path")
            if api_route == "readyz":  # patched by ktt
                ready, body = await self.ktt_check_ready()
                return Response(status=200 if ready else 503, body=body, content_type="application/json",
                                headers={} if ready else {"Retry-After": "1"})
            if api_route in self.batch_handlers and not self.ktt_ready and not (await self.ktt_check_ready())[0]:
                return self.ktt_shed(api_route, "not_ready")  # patched by ktt
            if api_route in self.batch_handlers:
''', replace=True)
patch(marshal, "    def add_batch_handler(self, api_route, max_latency, max_batch_size):\n", '''    # patched by ktt: readiness, a cost model measured by the model server, honest shedding
    ktt_ready = False

    def ktt_shed(self, api_route, reason):
        """The answer to a request the micro-batcher will not take: 503 before the model server is
        ready, 429 when the queue cannot be served within the latency budget; both with Retry-After
        (seconds: the estimated time to serve the queue, at least 1), counted by reason."""
        from aiohttp.web import HTTPServiceUnavailable, HTTPTooManyRequests

        d = self.ktt_dispatchers.get(api_route)
        wait = 1.0 if d is None else d.optimizer.o_a * len(d._queue) + d.optimizer.o_b
        counter = getattr(self, "metrics_request_shed", None)
        if counter is not None:
            counter.labels(endpoint=api_route, reason=reason).inc()
        if reason == "not_ready":
            return HTTPServiceUnavailable(headers={"Retry-After": "1"}, text="the service is starting: retry shortly")
        return HTTPTooManyRequests(headers={"Retry-After": str(max(1, math.ceil(wait)))},
                                   text="the service is at capacity: retry after Retry-After seconds")

    async def ktt_check_ready(self):
        """Ask the model server's /readyz (callers arriving meanwhile share the question); on its
        first 200, seed each micro-batcher's cost model (duration = a * n + b) with the batch times
        it measured."""
        probe = getattr(self, "ktt_probe", None)
        if probe is None or probe.done():
            probe = self.ktt_probe = asyncio.ensure_future(self.ktt_ask_ready())
        return await asyncio.shield(probe)

    async def ktt_ask_ready(self):
        import json

        from aiohttp import ClientError, ClientTimeout

        try:
            async with self.get_client().get(f"http://{self.outbound_host}:{self.outbound_port}/readyz",
                                             timeout=ClientTimeout(total=1)) as resp:
                status, body = resp.status, await resp.read()
        except (ClientError, asyncio.TimeoutError, OSError):
            return False, b'{"ready": false}'
        if status == 200 and not self.ktt_ready:
            try:
                samples = json.loads(body or b"{}").get("batch_seconds") or []
            except ValueError:
                samples = []
            for d in self.ktt_dispatchers.values():
                if len(samples) >= 2:
                    opt = d.optimizer
                    opt.o_stat.extend((int(n), float(s), 0.0) for n, s in samples)
                    opt._outbound_counter = opt.N_SKIPPED_SAMPLE + 1  # real batches count from the first
                    opt.trigger_refresh()
            self.ktt_ready = True
        return status == 200, body

    async def ktt_start_polling(self, app):
        async def poll():
            while not self.ktt_ready:
                await self.ktt_check_ready()
                if not self.ktt_ready:
                    await asyncio.sleep(0.1)
        self.ktt_poller = asyncio.get_event_loop().create_task(poll())

    def add_batch_handler(self, api_route, max_latency, max_batch_size):
''', replace=True)
# 7. the model server behind the front server: on the loopback interface only
gunicorn_server = root / "server" / "gunicorn_server.py"
patch(gunicorn_server, '                self.bind = f"0.0.0.0:{port}"\n',
      '                self.bind = f"127.0.0.1:{port}"  # patched by ktt: only the front server talks to it\n',
      replace=True)
patch(marshal, '        outbound_host="localhost",\n', '        outbound_host="127.0.0.1",  # patched by ktt\n', replace=True)

# 8. bodies no valid request needs are refused by the front server
patch(root / "configuration" / "default_configuration.yml", "  max_request_size: 20971520\n",
      "  max_request_size: 8388608  # patched by ktt: ktt.serving.requests.MAX_BODY_BYTES\n", replace=True)

print(f"patched {root}")
