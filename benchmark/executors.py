"""Executors: where a sweep's runs run. One small interface:

``executor.run(runs)`` returns an iterator that yields one :class:`benchmark.sweep.Outcome` per run as each
finishes (in completion order). Closing the iterator early (fail-fast, Ctrl-C) cancels what is still queued or
running. Every executor runs :func:`run_one` for each run, and there the runner writes the record atomically; a
run that raises is a failed outcome and the sweep goes on.

* :class:`SequentialExecutor` (``--executor local``, the default): one run after another in this process.
* :class:`ProcessPoolExecutor` (``--executor local --jobs N``): N runs at a time, each in a fresh child process
  (forked from a fork server that has imported the plugins' code), so one run's memory, threads or crash never
  touch another; each child gets its share of the CPUs as torch threads (:func:`threads_per_run`); a child that dies
  without reporting (killed, out of memory) is retried up to ``max_retries`` times, then reported as failed. A
  child never outlives the sweep, even a SIGKILLed one: it dies with the fork server (:func:`die_with_parent`) and
  also watches the sweep's own pid (:func:`die_with`).
* :class:`RayExecutor` (``--executor ray``): one Ray task per run, on a local instance or on the cluster at
  ``address``. Each task asks for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (default: 1 on the paper
  profile, 0 otherwise); a task whose worker dies is retried by Ray (``max_retries``); Python exceptions are not
  retried (they would fail again). Each run gets a fresh worker process (``max_calls=1``), so the record's peak
  memory is that run's and GPU memory is given back. The worker writes the record; the driver writes it only when
  the worker's file is not visible to it (a multi-node cluster without a shared file system). A local instance
  is started on 127.0.0.1 without a dashboard: a local sweep needs no network.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from benchmark.errors import UserError
from benchmark.registry import RegistryError
from benchmark.runner import RunSpec, run
from benchmark.sweep import Outcome, SweepRun, import_plugins, module_roots

__all__ = ["Executor", "SequentialExecutor", "ProcessPoolExecutor", "RayExecutor", "make_executor", "run_one"]

#: the address a local Ray instance binds (its GCS, raylet and object store); a local sweep needs no network
LOCAL_RAY_IP = "127.0.0.1"
#: environment variables a Ray worker on another node (or started before this driver) needs from the driver
FORWARDED_ENV = (
    "MERGE_BENCH_CACHE", "MERGE_BENCH_MODELS", "MERGE_BENCH_DATA", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
)


def run_one(spec: RunSpec, plugins: Sequence[str] = (), with_record: bool = False) -> dict[str, Any]:
    """Worker side of every executor: import the sweep's plugin modules, run, and return a small summary."""
    import_plugins(plugins)
    t0 = time.perf_counter()
    record, path = run(spec)
    out = {"path": str(path), "average": record["average"], "val_average": record.get("val_average"),
           "seconds": time.perf_counter() - t0}
    if with_record:
        out["record"] = record
    return out


def describe(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):  # user errors are one line already
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _done(r: SweepRun, res: dict[str, Any], attempts: int = 1) -> Outcome:
    return Outcome(r, "done", res["seconds"], path=res["path"], average=res["average"],
                   val_average=res.get("val_average"), attempts=attempts)


class Executor:
    name = "executor"

    def run(self, runs: Sequence[SweepRun]) -> Iterator[Outcome]:
        raise NotImplementedError


class SequentialExecutor(Executor):
    """``progress``: each run shows its own progress bars (suite generation, pretraining, fine-tuning, merging,
    evaluation) under the sweep's bar, so a first run that builds checkpoints for minutes is not a frozen bar. Only
    here: the children of the other executors would interleave their bars on one terminal."""

    name = "local"

    def __init__(self, plugins: Sequence[str] = (), progress: bool = False):
        self.plugins = list(plugins)
        self.progress = progress

    def run(self, runs: Sequence[SweepRun]) -> Iterator[Outcome]:
        for r in runs:
            t0 = time.perf_counter()
            try:
                res = run_one(replace(r.spec, progress=True) if self.progress else r.spec, self.plugins)
            except Exception as e:  # reported; the sweep goes on (KeyboardInterrupt stops it)
                yield Outcome(r, "failed", time.perf_counter() - t0, error=describe(e))
            else:
                yield _done(r, res)


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the process that started it exits (elsewhere a no-op).

    Called by every run's child (whose parent is the fork server) and by the fork server itself
    (``benchmark._preload``, whose parent is the sweep): a SIGKILLed sweep then takes the server down, and the
    server its runs. With the children alone bound, the server outlived the sweep and its runs went on writing
    records (tests/test_sweep.py::test_a_sigkilled_parallel_sweep_leaves_no_worker_running)."""
    try:
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the binding took: nothing would signal us
            os._exit(1)
    except (OSError, AttributeError):
        pass


def die_with(pid: int, poll_s: float = 0.5) -> None:
    """SIGKILL this process soon after process ``pid`` (the sweep) is gone, whoever our parent is.

    :func:`die_with_parent` chains through the fork server, whose own death signal fires when the *thread* that
    started it exits, and a fork server can outlive the sweep in ways the kernel does not see as a parent's death.
    So each run also watches the sweep itself, from a daemon thread: on Linux through a pidfd (readable when the
    process exits; no pid-reuse race), elsewhere by polling ``os.kill(pid, 0)``. Started in the run's own process,
    so nothing has to survive a fork for it to work."""
    import threading

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            kill()
        except OSError:
            pass

    def watch() -> None:
        if fd is not None:
            import select

            select.select([fd], [], [])
            kill()
        while True:
            time.sleep(poll_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                kill()
            except OSError:
                pass

    threading.Thread(target=watch, name=f"die-with-{pid}", daemon=True).start()


def threads_per_run(jobs: int) -> int | None:
    """Torch threads for each of ``jobs`` concurrent runs on this machine: its CPUs shared out, at least 1. None
    when ``OMP_NUM_THREADS`` is set: the user chose, and torch follows it already. Without this every child takes
    all the CPUs, and N children spin N times as many threads as there are cores (on 2 cores, 2 jobs of a tiny
    ViT-L/14 run took 5x as long each as one run alone: benchmarks/sweep_overhead.py)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // jobs)


def _child(spec: RunSpec, plugins: Sequence[str], conn: mp.connection.Connection, threads: int | None = None,
           sweep_pid: int | None = None) -> None:
    die_with_parent()
    if sweep_pid is not None:
        die_with(sweep_pid)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        msg = ("ok", run_one(spec, plugins))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, whatever it is
        msg = ("error", describe(e), traceback.format_exc())
    try:
        conn.send(msg)
    except OSError:  # the sweep stopped (Ctrl-C, fail-fast) while this run finished; its record stands
        pass
    finally:
        conn.close()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPoolExecutor(Executor):
    name = "local"

    def __init__(self, jobs: int, plugins: Sequence[str] = (), max_retries: int = 0):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1; got {jobs}")
        self.jobs = jobs
        self.threads = threads_per_run(jobs)
        self.plugins = list(plugins)
        self.max_retries = max_retries
        self.name = f"local, {jobs} processes"

    def run(self, runs: Sequence[SweepRun]) -> Iterator[Outcome]:
        # Children fork from a fork server that has imported the harness, every registered plugin
        # (benchmark._preload) and the sweep's plugin modules once (a clean process: no fork of this one, which may
        # hold torch's threads), so a run does not start with seconds of imports (benchmarks/sweep_overhead.py).
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["benchmark.executors", "benchmark._preload", *self.plugins])
        queue: deque[tuple[SweepRun, int]] = deque((r, 1) for r in runs)
        active: dict[Any, tuple[Any, Any, SweepRun, int, float]] = {}  # receiving end -> (process, ...)
        try:
            while queue or active:
                while queue and len(active) < self.jobs:
                    r, attempt = queue.popleft()
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_child, args=(r.spec, self.plugins, send, self.threads, os.getpid()),
                                       name=f"sweep-{r.config_hash}")
                    proc.start()
                    send.close()
                    active[recv] = (proc, recv, r, attempt, time.perf_counter())
                waitables = list(active) + [p.sentinel for p, *_ in active.values()]
                ready = set(mp.connection.wait(waitables))
                for recv in [k for k, v in active.items() if k in ready or v[0].sentinel in ready]:
                    proc, _, r, attempt, t0 = active.pop(recv)
                    try:
                        msg = recv.recv() if recv.poll() else None
                    except (EOFError, OSError):
                        msg = None  # died before it could report
                    recv.close()
                    proc.join()
                    dt = time.perf_counter() - t0
                    if msg is None:
                        if attempt <= self.max_retries:
                            queue.append((r, attempt + 1))
                            continue
                        err = f"worker process died ({_exit_reason(proc.exitcode)}) after {attempt} attempt(s)"
                        yield Outcome(r, "failed", dt, error=err, attempts=attempt)
                    elif msg[0] == "ok":
                        yield _done(r, msg[1], attempt)
                    else:
                        yield Outcome(r, "failed", dt, error=msg[1], attempts=attempt)
        finally:
            for proc, recv, *_ in active.values():
                proc.terminate()
                proc.join()
                recv.close()


def _ray_run(spec: RunSpec, plugins: Sequence[str]) -> dict[str, Any]:
    return run_one(spec, plugins, with_record=True)


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        plugins: Sequence[str] = (),
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_run: float = 1,
        gpus_per_run: float | None = None,
        max_retries: int = 2,
        object_store_mb: int = 128,
    ):
        self.plugins = list(plugins)
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries
        self.object_store_mb = object_store_mb
        self._owns = False

    def runtime_env(self) -> dict[str, Any]:
        """Environment variables for the workers: the folders of the harness and of the plugin modules on
        PYTHONPATH (in front of the driver's own PYTHONPATH), and the cache/offline settings of the driver. On a
        cluster whose nodes do not share those paths, install the package (and the plugins) on every node."""
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        roots = module_roots(["benchmark", *self.plugins])  # the driver's harness too: workers run the same code
        path = roots + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if path:
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        return {"env_vars": env} if env else {}

    def gpus_for(self, r: SweepRun) -> float:
        if self.gpus_per_run is not None:
            return self.gpus_per_run
        return 1 if r.spec.profile == "paper" else 0

    def _start(self, ray: Any) -> None:
        if ray.is_initialized():  # an instance the caller started (tests, notebooks): use it, leave it running
            return
        common = dict(log_to_driver=False, logging_level="WARNING", configure_logging=True)
        if self.address:
            ray.init(address=self.address, **common)
        else:  # a local instance serves this machine only: loopback, no dashboard (nothing listens outside)
            # ray.init turns a loopback _node_ip_address into the machine's outward IP
            # (services.resolve_ip_for_localhost) unless ray_constants.ENABLE_RAY_CLUSTER is off, as it is on macOS
            # and Windows; every Ray process binds loopback only when the node IP is 127.0.0.1 and all interfaces
            # otherwise. The flag is read once at import (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER), so set it for this call
            # only: after init the node IP comes from the running node, and a later ray.init(address=...) of a
            # cluster in this process must still find its outward IP.
            consts = ray._private.ray_constants
            was, consts.ENABLE_RAY_CLUSTER = consts.ENABLE_RAY_CLUSTER, False
            try:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         _node_ip_address=LOCAL_RAY_IP, object_store_memory=self.object_store_mb * 1024 * 1024,
                         **common)
            finally:
                consts.ENABLE_RAY_CLUSTER = was
        self._owns = True

    def run(self, runs: Sequence[SweepRun]) -> Iterator[Outcome]:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'merge-bench[ray]'") from None
        self._start(ray)
        pending: dict[Any, tuple[SweepRun, float]] = {}
        try:
            need = max(self.gpus_for(r) for r in runs)
            have = ray.cluster_resources().get("GPU", 0)
            if need > have:
                why = "" if self.gpus_per_run is not None else " (the paper profile's default)"
                raise UserError(f"runs ask for {need:g} GPU(s) each{why} but the Ray cluster has {have:g}; "
                                "pass --gpus-per-run 0 to run on CPUs")
            task = ray.remote(max_calls=1)(_ray_run)  # a fresh worker process per run
            env = self.runtime_env()
            for r in runs:
                spec = r.spec
                opts = dict(num_cpus=self.cpus_per_run, num_gpus=self.gpus_for(r), max_retries=self.max_retries,
                            retry_exceptions=False, name=f"merge-bench {spec.method} {spec.backbone}")
                if env:
                    opts["runtime_env"] = env
                pending[task.options(**opts).remote(spec, self.plugins)] = (r, time.perf_counter())
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                r, t0 = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - RayTaskError wraps the run's own exception
                    cause = getattr(e, "cause", None)
                    err = describe(cause) if isinstance(cause, BaseException) else describe(e)
                    yield Outcome(r, "failed", time.perf_counter() - t0, error=err)
                    continue
                if not Path(res["path"]).exists():  # worker on another node without a shared results folder
                    from benchmark.records import write_record

                    write_record(res["record"], r.spec.results_dir)
                yield _done(r, res)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if self._owns:
                ray.shutdown()
                self._owns = False


def make_executor(
    name: str,
    *,
    plugins: Sequence[str] = (),
    jobs: int | None = None,
    max_retries: int = 2,
    ray_address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float | None = None,
    progress: bool = False,
) -> Executor:
    if name == "local":
        if jobs is None or jobs == 1:
            return SequentialExecutor(plugins, progress=progress)
        return ProcessPoolExecutor(jobs, plugins, max_retries=max_retries)
    if name == "ray":
        return RayExecutor(plugins, address=ray_address, num_cpus=jobs, cpus_per_run=cpus_per_run,
                           gpus_per_run=gpus_per_run, max_retries=max_retries)
    raise UserError(f"unknown executor {name!r}; valid: local, ray")
