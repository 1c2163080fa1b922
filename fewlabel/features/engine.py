"""The optional distributed engine: Ray Data spreads featurize's and predict's per-image work
over a pool of workers, on this machine or on a cluster.

    features.engine: auto     # ray when $RAY_ADDRESS is set, else single (the default)
                     single   # this process only: the path that runs without Ray installed
                     ray      # Ray Data: a local ray.init() unless $RAY_ADDRESS names a cluster
    features.workers: null    # ray: workers in the pool (null: one per GPU, else one per 4 CPUs)

Both engines run the same work: :func:`map_chunks` hands chunks of rows (image paths and
their positions) to a *worker*, an object that a picklable factory builds once (it loads the
backbones once) and then calls once per chunk. ``single`` calls it in this process, chunk
after chunk; ``ray`` builds one per actor of a Ray Data actor pool (``map_batches``) and
streams the chunks through them in order, with Ray's retries: an actor that dies is
restarted and its chunk run again. Workers write each vector to the shared per-image feature
cache as they go, so a retry or a rerun never recomputes one.

Ray is an optional dependency (``pip install -r requirements-engine.txt``); without it the
single-process path runs unchanged and asking for ``ray`` says how to install it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fewlabel.io import CACHE_ENV
from fewlabel.errors import PipelineError
from fewlabel.features.cache import FEATURE_CACHE_ENV
from fewlabel.params import ENGINES

ADDRESS_ENV = "RAY_ADDRESS"
# Workers by default on a CPU cluster: one per this many CPUs (each a TensorFlow process with
# its own copy of the models: fewer, multi-threaded workers keep memory in check).
CPUS_PER_WORKER = 4
REQUIREMENTS_FILE = "requirements-engine.txt"
# The driver's settings that workers must share: where the per-image caches and the weights are.
SHARED_ENV = (CACHE_ENV, FEATURE_CACHE_ENV, "KERAS_HOME")


@dataclass(frozen=True)
class Engine:
    """How per-image work runs: ``name`` single or ray (resolved), ``workers`` in the pool (ray)."""
    name: str = "single"
    workers: int | None = None

    @property
    def label(self) -> str:
        if self.name == "single":
            return "single process"
        return f"ray ({os.environ.get(ADDRESS_ENV) or 'local'}, {self.workers or 'auto'} workers)"


def resolve_engine(name: str, workers: int | None = None, setting: str = "features.engine") -> Engine:
    """The engine for a setting: ``auto`` is ray when ``$RAY_ADDRESS`` is set, else single.

    Asking for ray (directly or through ``$RAY_ADDRESS``) without Ray installed raises a
    PipelineError that says how to install it or how to do without.
    """
    if name not in ENGINES:
        raise PipelineError(f"{setting} must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "auto":
        name = "ray" if os.environ.get(ADDRESS_ENV) else "single"
    if name == "ray" and not ray_installed():
        why = f"{setting} is ray" if not os.environ.get(ADDRESS_ENV) else \
            f"${ADDRESS_ENV} is set ({os.environ[ADDRESS_ENV]})"
        single = f"{setting} single" if setting.startswith("--") else f"{setting}: single"
        raise PipelineError(f"{why}, but Ray Data, the optional distributed engine, is not installed: "
                            f"install it with `pip install -r {REQUIREMENTS_FILE}` (ray[data]), or run "
                            f"in this process with {single} (and unset ${ADDRESS_ENV})")
    return Engine(name, workers)


def ray_installed() -> bool:
    """Whether ``ray.data`` can be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def map_chunks(make_worker: Callable[[], Callable[[dict], dict]], columns: dict[str, np.ndarray],
               chunk_size: int, engine: Engine) -> Iterator[dict]:
    """Run ``worker(chunk)`` over ``columns`` (equal-length arrays) in chunks of ``chunk_size``
    rows; yield each chunk's result (a dict of arrays), in the order of the rows.

    ``make_worker`` is called once per worker (once here for ``single``; once per actor, on
    the actor, for ``ray``), so it must be picklable (a class or ``functools.partial``).
    """
    n_rows = len(next(iter(columns.values())))
    if engine.name == "single":
        worker = make_worker()
        for start in range(0, n_rows, chunk_size):
            yield worker({name: values[start:start + chunk_size] for name, values in columns.items()})
        return
    yield from _ray_map_chunks(make_worker, columns, n_rows, chunk_size, engine.workers)


# ----------------------------------------------------------------------------- ray

def connect_ray(**local_options):
    """``ray`` connected: to ``$RAY_ADDRESS`` if set, else a new local instance started here
    (with ``local_options`` for ``ray.init``, e.g. ``num_cpus=2``); an existing connection is kept.

    Workers get this ``fewlabel`` package (``py_modules``), so a cluster needs only
    the same requirements installed, not a copy of the code, and the driver's cache and weights
    settings (``SHARED_ENV``), so they read and write the same per-image cache as the driver.
    """
    import ray
    if not ray.is_initialized():
        shared = {name: os.environ[name] for name in SHARED_ENV if os.environ.get(name)}
        runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])],
                       "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", **shared}}
        # "local": always a new instance, never one left by `ray start` on this machine (Ray's
        # address=None would join that, or fail on its stale address file)
        address = os.environ.get(ADDRESS_ENV) or "local"
        try:
            ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False,
                     **(local_options if address == "local" else {}))
        except ConnectionError as error:
            if address == "local":
                raise
            raise PipelineError(cluster_unreachable(address, error)) from error
    import ray.data
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the stages draw their own
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def cluster_unreachable(address: str, error: Exception) -> str:
    """What to check when the cluster at ``$RAY_ADDRESS`` refuses this driver."""
    return (f"cannot connect to the Ray cluster at ${ADDRESS_ENV} ({address}): {error}. Check that its head "
            f"is up (`ray status` there) and that this machine has the cluster's token: Ray 2.60 "
            f"starts clusters with token authentication by default, so export RAY_AUTH_MODE=token and "
            f"RAY_AUTH_TOKEN (the same on every node; `ray get-auth-token` on the head prints it). "
            f"Or unset {ADDRESS_ENV} to run on this machine")


class _ChunkActor:
    """One actor of the pool: builds its worker once, then runs it on each chunk."""

    def __init__(self, make_worker, threads: int):
        from fewlabel import tf_logs
        tf_logs.install()  # a worker process's entry: quiet TensorFlow's start-up as the driver does
        import tensorflow as tf
        try:  # its share of the CPUs: TensorFlow's own pools would otherwise take every core
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already initialised in this process
            pass
        self.worker = make_worker()

    def __call__(self, chunk: dict) -> dict:
        return self.worker(chunk)


def _ray_map_chunks(make_worker, columns: dict, n_rows: int, chunk_size: int, workers: int | None):
    ray = connect_ray()
    import pandas as pd

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    size = workers or gpus or max(1, cpus // CPUS_PER_WORKER)
    largest_node = max(int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node["Alive"])
    threads = max(1, min(cpus // size, largest_node))  # an actor runs on one node
    gpus_per_worker = min(1.0, gpus / size) if gpus else 0  # more workers than GPUs: they share
    chunk_size = max(1, min(chunk_size, -(-n_rows // (2 * size))))  # few rows: still every worker
    frame = pd.DataFrame(columns)
    blocks = [frame.iloc[start:start + chunk_size] for start in range(0, n_rows, chunk_size)]
    dataset = ray.data.from_pandas(blocks).map_batches(
        _ChunkActor, fn_constructor_kwargs={"make_worker": make_worker, "threads": threads},
        batch_size=chunk_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=threads, num_gpus=gpus_per_worker)
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
