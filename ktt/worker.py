"""A helper process that runs the functions it is sent: work that would otherwise hold this
process's interpreter lock while a fit runs (``ktt.tracking`` sends it MLflow's calls).

``Worker().call(fn, *args)`` runs ``fn(*args)`` there, ``fn`` a module-level function and the
arguments picklable, and returns its result or raises its exception; calls from several threads
run side by side. The process is started afresh (``python -m ktt.worker``, not forked: this one's
threads, open database connections and sockets stay here) and ends when the caller closes it or goes.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path


class Gone(RuntimeError):
    """The worker process ended before it answered."""


class Worker:
    def __init__(self, threads: int = 4):
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # where ``ktt`` is, wherever the caller runs from
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "ktt.worker", str(requests_r), str(answers_w),
                                           str(threads)], pass_fds=(requests_r, answers_w), env=env,
                                          stdin=subprocess.DEVNULL, stdout=2)  # the caller's stdout stays its own
        finally:
            os.close(requests_r), os.close(answers_w)
        self._requests = Connection(requests_w, readable=False)
        self._answers = Connection(answers_r, writable=False)
        self._lock = threading.Lock()
        self._calls: dict[int, Future] = {}
        self._next = 0
        self.alive = True
        threading.Thread(target=self._read, daemon=True, name="ktt-worker-answers").start()

    def call(self, fn, *args):
        """``fn(*args)`` in the worker; raises :class:`Gone` when it has ended."""
        payload = pickle.dumps((fn, args))  # here, so that what does not pickle fails in the caller
        future = Future()
        with self._lock:
            if not self.alive:
                raise Gone("the worker process has ended")
            self._next += 1
            self._calls[self._next] = future
            try:
                self._requests.send_bytes(self._next.to_bytes(8, "little") + payload)
            except OSError as e:
                self._calls.pop(self._next)
                raise Gone(f"the worker process has ended ({e})") from None
        return future.result()

    def _read(self) -> None:
        try:
            while True:
                key, ok, value = self._answers.recv()
                with self._lock:
                    future = self._calls.pop(key)
                future.set_result(value) if ok else future.set_exception(value)
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                self.alive = False
                calls, self._calls = self._calls, {}
            code = self._proc.poll()
            for future in calls.values():
                future.set_exception(Gone(f"the worker process ended (exit code {code}) before it answered"))

    def close(self, timeout: float | None = None) -> None:
        """No more calls: the worker finishes those it has and ends (waited for up to ``timeout`` s)."""
        with self._lock:
            self.alive = False
            self._requests.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _serve(requests: Connection, answers: Connection, threads: int) -> None:
    lock = threading.Lock()

    def run(message: bytes) -> None:
        key = int.from_bytes(message[:8], "little")
        try:
            fn, args = pickle.loads(message[8:])
            answer = (key, True, fn(*args))
        except BaseException as e:  # the caller's to raise
            answer = (key, False, e)
        with lock:
            try:
                answers.send(answer)
            except Exception as e:  # a result or error that does not pickle
                what = answer[2] if not answer[1] else e
                answers.send((key, False, RuntimeError(f"{type(what).__name__}: {what}")))

    with ThreadPoolExecutor(threads, thread_name_prefix="ktt-worker") as pool:
        while True:
            try:
                message = requests.recv_bytes()
            except (EOFError, OSError):  # closed, or the caller has gone: finish what was sent, then end
                return
            pool.submit(run, message)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the caller, which closes this one's requests
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False),
           int(sys.argv[3]))
