"""Several training processes (``torchrun``) through ``torch.distributed``: who this process is,
its part of the data, and the few collectives the training loop needs; and Spark for the
per-node fits of the TF-IDF models (:func:`spark_backend`).

``torchrun --nproc_per_node N -m ktt train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them into one process group (``nccl``
on GPUs, ``gloo`` on CPUs). Outside torchrun everything here is a no-op for a world of one.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that talks to MLflow and writes checkpoints."""
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment (a world of one without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                 int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))


def setup() -> World:
    """Join the process group (once); returns this process's :class:`World`."""
    w = world()
    if w.size == 1:
        return w
    import torch
    import torch.distributed as dist

    from . import threads

    if not dist.is_initialized():
        gpu = torch.cuda.is_available()
        if gpu:  # one GPU per process: "cuda" means this process's GPU from here on
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group("nccl" if gpu else "gloo")
        if not threads.configured():  # the machine's cores shared by the processes on it
            os.environ[threads.ENV] = str(threads.share(w.local_size))
    return w


def finish(w: World) -> None:
    """Leave the process group once every rank is done with it. A process that exits without this
    can abort at interpreter exit (gloo's threads still running: "terminate called without an
    active exception", SIGABRT), and torchrun then fails the whole run."""
    if w.size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def part(n: int, w: World) -> slice:
    """This rank's contiguous part of ``n`` rows: parts in rank order are the rows in order."""
    lo, extra = divmod(n, w.size)
    start = w.rank * lo + min(w.rank, extra)
    return slice(start, start + lo + (w.rank < extra))


def rows(batch, w: World):
    """This rank's rows of a global batch: every ``size``-th, from its rank on."""
    return batch[w.rank::w.size]


def batch_loss(row_losses, batch_size: int, w: World):
    """This rank's share of the global batch's mean loss: its rows' losses summed, times
    ``size / batch_size``. DDP averages the ranks' gradients, so the average is the gradient of
    the mean over the whole batch, even when the ranks hold different numbers of rows."""
    return row_losses.sum() * (w.size / batch_size)


def gather(obj, w: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if w.size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def mean(value: float, w: World) -> float:
    """The mean of every rank's ``value``."""
    if w.size == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.item() / w.size


def decide(flag: bool, w: World) -> bool:
    """Rank 0's ``flag`` on every rank: one decision (stop early or go on) for the whole group."""
    if w.size == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


@contextmanager
def spark_backend(master: str | None):
    """Inside, joblib's parallel work (the TF-IDF models' per-node fits) runs as Spark tasks on
    ``master`` (``local[4]``, ``spark://host:7077``, ``yarn``), through joblib's Spark backend
    (``joblibspark``), one task per node, as many at once as the cluster's default parallelism.
    ``None``: this machine's cores, as without it."""
    if not master:
        yield
        return
    from joblib import parallel_config
    from joblibspark import register_spark
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this environment
    spark = SparkSession.builder.master(master).appName("ktt-train").config("spark.ui.enabled", "false").getOrCreate()
    register_spark()
    try:
        with parallel_config(backend="spark", n_jobs=spark.sparkContext.defaultParallelism):
            yield
    finally:
        spark.stop()


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``ktt <argv>`` again on ``nproc`` processes through torchrun (``--standalone``), without
    its ``--nproc`` option (torchrun would read it as its own); the exit status of the run."""
    import subprocess

    args, rest = [], iter(argv)
    for a in rest:
        if a == "--nproc":
            next(rest, None)
        elif not a.startswith("--nproc="):
            args.append(a)
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}", "-m", "ktt", *args])
