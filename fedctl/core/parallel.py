"""Parallel clients in one machine: long-lived worker processes that each hold the task and a
working model, train the clients the server hands them, and exchange tensors through shared memory.

Why processes: a client's local training is a Python loop of small torch ops, so threads inside one
interpreter serialise on the GIL and intra-op threads barely help tiny models; one process per core
with one torch thread each keeps every core busy. (Ray, as in Flower's simulation engine, does the
same at the cost of ~2 GB of extra processes and seconds of start-up.)

How a round goes (`ParallelExecutor.__call__`, an engine Executor):
  1. the server copies the global state into ONE shared-memory buffer that every worker reads
     (and uses as the FedProx anchor) — one model copy per round, whatever the worker count;
  2. idle workers take the next sampled client (in sampled order); a worker loads the global
     state into its own model, seeds exactly as the sequential engine does (`prepare_client`),
     runs the one client trainer (`local.train_client`: local training, update pruning, the task's
     after-training hook, the statistics the strategy asked for), then copies the trained shared
     tensors into ITS update slot (shared memory, preallocated) and reports (num_examples,
     metrics, stats, optimizer state; small, pickled);
  3. the server yields outcomes in sampled order, so aggregation is bit-identical to the
     sequential engine for any worker count; an early arrival waits in its worker's slot, and
     that worker may already train its next client — it only blocks before overwriting the slot
     until the server has folded the previous result. Memory: the global buffer + one slot per
     worker + the engine's O(model) accumulator, never O(clients × model).

Start-up: on Linux CPU with one torch thread per worker (the common case, and what a 2-core
machine gets), workers are forked from the server after it built the task, so they share its
data and tokenizer pages copy-on-write and start in milliseconds; each builds its working model
once. With more than one thread per worker (GNU OpenMP hangs in a forked child of a process that
already used its thread pool) or on CUDA (CUDA cannot be used after fork), workers are spawned
and rebuild the task from the resolved run config — workload name, task section and the
TaskContext fields — exactly as the Flower ClientApp does (fedctl.tasks.rebuild).

Faults: a client that raises is reported as failed (the engine leaves it out); a worker process
that dies (crash, SIGKILL, OOM killer) takes only its current client out of the round and is
restarted at once; FedctlError inside a worker stops the run as it would in-process; Ctrl-C and
any exit close every worker (finally + atexit; workers ignore SIGINT and die with the server via
PR_SET_PDEATHSIG on Linux), so no process outlives the run. Ctrl-C is held back while a worker
starts (`_sigint_deferred`): one that landed during the fork raised its KeyboardInterrupt inside an
at-fork callback (logging registers one), where Python drops it, and the run went on; held back, it
is raised right after the start.

GPU (designed, NOT tested here: these machines have no GPU): with `device: cuda` workers are
spawned; `--workers 0` gives one worker per visible GPU, `--workers N` places worker w on
cuda:(w mod GPUs) (several workers may share a GPU). The shared buffers stay in host memory
(one H2D copy per client, one D2H copy per update); the server moves each update to its own device.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import pickle
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from typing import Any

import torch

from fedctl.core import stateful
from fedctl.core.engine import ClientOutcome, Run, local_executor, prepare_client
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies import ClientUpdate
from fedctl.errors import FedctlError

State = dict[str, torch.Tensor]
TaskFactory = Callable[[str], Any]  # device name -> a built task (must be picklable for spawned workers)


# ----------------------------------------------------------------------------------- sizing


CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" in microseconds, or "max <period>"


def affinity_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cgroup_cpus(path: str = CPU_MAX) -> float | None:
    """CPUs' worth of time the cgroup v2 quota allows (quota / period, e.g. 1.5), or None when unlimited
    or unknown (no cgroup v2, unreadable, malformed)."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cores(affinity: int, quota: float | None) -> int:
    """Cores this process can keep busy: its affinity mask, capped by the cgroup quota (rounded down,
    at least 1: a quota of 1.5 CPUs runs 2 busy threads at 75% each, slower than 1 at 100%)."""
    cores = max(1, affinity)
    if quota is not None and quota > 0:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


def available_cores() -> int:
    """`usable_cores` of this process: its affinity mask capped by its cgroup's CPU quota."""
    return usable_cores(affinity_cores(), cgroup_cpus())


def default_threads(*, workers: int, affinity: int, quota: float | None) -> int:
    """torch intra-op threads per process when run.threads is 0 (auto).

    With several worker processes each gets 1 thread, and so does the server (it only folds updates):
    N processes × several OpenMP threads on N cores oversubscribe them, and OpenMP threads spinning against
    other work are ruinous (measured on a 2-core machine shared with one other job: `lerp_` on 1M floats
    12 ms with 2 threads, 0.8 ms with 1). One process (`--workers 1`, evaluation, a Flower node) gets the
    cores it may use — its affinity mask capped by the cgroup quota — rather than torch's default, which
    counts the machine's cores whatever the container allows."""
    return 1 if workers > 1 else usable_cores(affinity, quota)


def resolve_threads(threads: int, *, workers: int = 1) -> int:
    """run.threads as given when > 0, else `default_threads` for this process's affinity and cgroup quota."""
    if threads > 0:
        return threads
    return default_threads(workers=workers, affinity=affinity_cores(), quota=cgroup_cpus())


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class WorkerPlan:
    workers: int  # 1: train sequentially in the server process
    threads: int  # torch intra-op threads per worker
    devices: tuple[str, ...]  # device of worker w: devices[w]
    start_method: str  # fork or spawn


def plan_workers(requested: int, *, threads: int, clients_per_round: int, device: torch.device,
                 model_bytes: int = 0, cores: int | None = None, gpus: int | None = None) -> WorkerPlan:
    """How many workers, with how many torch threads each, on which devices.

    `requested` 0 = auto: on CPU, cores // threads-per-worker (threads = run.threads, or 1 when
    run.threads is 0), capped by the clients sampled per round and by free memory (a worker needs
    roughly its model, gradients and two AdamW moments: 4 × model_bytes, plus ~150 MB of
    interpreter and torch); on CUDA one worker per visible GPU. `threads` is run.threads (0 = pick).
    """
    cores = cores or available_cores()
    if device.type == "cuda":
        gpus = gpus if gpus is not None else torch.cuda.device_count()
        n = requested or (max(1, gpus) if device.index is None else 1)
        n = max(1, min(n, clients_per_round))
        if device.index is None and gpus > 0:
            devices = tuple(f"cuda:{w % gpus}" for w in range(n))
        else:
            devices = (str(device),) * n
        per = threads or max(1, cores // n)
        return WorkerPlan(n, per, devices, "spawn")
    per = threads or 1
    if requested:
        n = requested
        per = threads or (1 if n > 1 else cores)  # default_threads: one per worker process
    else:
        n = max(1, cores // per)
        free = available_memory_bytes()
        if free is not None and model_bytes:
            n = min(n, max(1, int(free * 0.8) // (4 * model_bytes + 150 * 2**20)))
    n = max(1, min(n, clients_per_round))
    fork_ok = "fork" in _start_methods() and per == 1
    return WorkerPlan(n, per, ("cpu",) * n, "fork" if fork_ok else "spawn")


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


# ----------------------------------------------------------------------------------- the worker


@dataclass
class _Spec:
    """Everything a worker process starts with (inherited on fork, pickled on spawn)."""

    wid: int
    conn: Any  # the worker's end of its pipe
    parent_conn: Any  # the server's end: closed in the worker so that EOF means the server is gone
    global_state: State  # shared, read-only for workers
    slot: State  # shared, this worker's update buffer
    slot_free: Any  # Event: set when the server has folded the previous update from `slot`
    threads: int
    device: str
    keys: list[str]
    seed: int
    keep_optimizer_state: bool
    task: Any = None  # fork: the server's task object
    task_factory: TaskFactory | None = None  # spawn: builds the task in the worker


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the server process dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _send(conn, *msg) -> None:
    # plain pickle: tensors (fisher, optimizer moments) travel by value, with no fd-passing threads
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _worker_main(spec: _Spec) -> None:
    try:
        _worker_loop(spec)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed our pipe (it stopped, e.g. on Ctrl-C while we started): nothing to report to


def _worker_loop(spec: _Spec) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the server died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server handles Ctrl-C and stops us
    if hasattr(signal, "pthread_sigmask"):  # blocked by the server across our start (see _sigint_deferred)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if hasattr(os, "setsid"):
        # Linux's autogroup scheduler (sched_autogroup_enabled, on by default) splits CPU time between
        # sessions, not processes: workers left in the server's session would share ONE session's slice
        # on a busy machine (measured: 2 workers ran at half speed each, no faster than 1 process). With a
        # session each, N workers compete like N jobs (no effect on an idle machine). Ray does NOT do
        # this: Flower's simulation actors share the driver's session. Ctrl-C still stops us via the server.
        with contextlib.suppress(OSError):
            os.setsid()
    if spec.parent_conn is not None:
        spec.parent_conn.close()
    torch.set_num_threads(spec.threads)
    conn = spec.conn
    try:
        task = spec.task if spec.task is not None else spec.task_factory(spec.device)
        model = task.build_model()
        params = model.state_dict()
        missing = [k for k in spec.keys if k not in params or params[k].shape != spec.slot[k].shape]
        if missing:
            raise FedctlError(f"the worker's model lacks or reshapes the shared tensors {missing[:3]}",
                              "the task must build the same model in every process (or use --workers 1)")
    except FedctlError as exc:
        _send(conn, "fatal", None, exc.message, exc.hint)
        return
    except Exception as exc:  # noqa: BLE001 - reported to the server, which stops the run
        _send(conn, "fatal", None, f"a parallel worker could not build the task: {type(exc).__name__}: {exc}",
              "run with --workers 1 to see the error in the server process")
        return
    device = torch.device(spec.device)
    on_host = device.type == "cpu"
    _send(conn, "ready", spec.wid)
    while True:
        try:
            job = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if not job:  # () = stop
            return
        pos, server_round, index, cid, instructions, client_state, payload = job
        with torch.no_grad():
            for k in spec.keys:
                params[k].copy_(spec.global_state[k])
        anchor = spec.global_state if on_host else {k: params[k].detach().clone() for k in spec.keys}
        cfg = prepare_client(spec.seed, server_round, index, instructions, anchor,
                             spec.keep_optimizer_state, client_state, payload)
        try:
            result = stateful.train(task, model, cid, cfg, spec.keys)
            stats = result.stats
        except FedctlError as exc:
            _send(conn, "fatal", pos, exc.message, exc.hint)
            continue
        except Exception as exc:  # noqa: BLE001 - a failing client is left out, not fatal
            _send(conn, "failed", pos, f"raised {type(exc).__name__}: {exc}")
            continue
        stats = {k: ({n: t.detach().cpu() for n, t in v.items()} if isinstance(v, dict) else v)
                 for k, v in stats.items()}
        spec.slot_free.wait()  # the server may still be folding our previous update out of the slot
        spec.slot_free.clear()
        with torch.no_grad():
            for k in spec.keys:
                spec.slot[k].copy_(params[k])
        _send(conn, "done", pos, result.num_examples, result.metrics, stats, result.client_state)


# ----------------------------------------------------------------------------------- the server side


class _Worker:
    def __init__(self, wid: int, device: str):
        self.wid = wid
        self.device = device
        self.process = None
        self.conn = None
        self.slot: State = {}
        self.slot_free = None
        self.job: tuple[int, str] | None = None  # (position in sampled order, client id) being trained
        self.holds: int | None = None  # position whose update sits in the slot, not yet folded
        self.ready = False

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


_POOLS: weakref.WeakSet = weakref.WeakSet()


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while a worker starts, then raise it. Two windows: in the server, a SIGINT that lands
    during the fork runs Python's handler inside an at-fork callback (logging registers one), where its
    KeyboardInterrupt is dropped and the run goes on — so the handler only records it here; in the worker,
    until it ignores SIGINT — so SIGINT is blocked in this thread, whose mask the worker inherits (a fork or
    a spawn alike) and unblocks once it ignores it. Main thread only (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT arrives now: recorded
        # signal.signal runs pending handlers first, so nothing is missed
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close()


class ParallelExecutor:
    """An engine Executor (see fedctl.core.engine) that trains sampled clients on worker processes.

    `workers` 0 = auto (see plan_workers); `threads` = run.threads (0: cores split over workers);
    `task_factory(device)` rebuilds the task in spawned workers (picklable; `fedctl train` passes
    fedctl.run.rebuild.rebuild_task bound to the run config); `start_method` overrides fork/spawn
    (tests). Use as a context manager, or call close(): it stops the workers (also at interpreter exit).
    """

    def __init__(self, workers: int = 0, *, threads: int = 0, task_factory: TaskFactory | None = None,
                 device: torch.device | str | None = None, start_method: str | None = None,
                 join_seconds: float = 5.0):
        self.requested = workers
        # the configured device: "cuda" (no index) spreads workers over every GPU; the global state's
        # own device always has an index and is only the fallback
        self.device = torch.device(device) if device is not None else None
        self.threads = threads
        self.task_factory = task_factory
        self.start_method = start_method
        self.join_seconds = join_seconds
        self.plan: WorkerPlan | None = None
        self.exit_codes: list[int | None] = []  # of every stopped worker process (0 = stopped when asked)
        self._workers: list[_Worker] = []
        self._global: State = {}
        self._ctx = None
        self._run: Run | None = None
        _POOLS.add(self)

    def __enter__(self) -> ParallelExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- lifecycle --------------------------------------------------------------------------------
    def _setup(self, run: Run, clients_per_round: int) -> None:
        device = self.device or next(iter(run.global_state.values())).device
        self.plan = plan_workers(self.requested, threads=self.threads, clients_per_round=clients_per_round,
                                 device=device, model_bytes=run.shared_bytes)
        if self.start_method:
            self.plan = WorkerPlan(self.plan.workers, self.plan.threads, self.plan.devices, self.start_method)
        self._run = run
        if self.plan.workers == 1:
            run.emit(_message("clients train one after another in this process (1 worker)"))
            return
        if self.threads == 0 and self.plan.devices[0] == "cpu":
            torch.set_num_threads(1)  # default_threads: the server only folds updates beside N busy workers
        if self.plan.start_method == "spawn":
            import torch.multiprocessing as _tmp  # noqa: F401 - registers the reductions that share tensors on spawn
            if self.task_factory is None:
                raise FedctlError(
                    f"{self.plan.workers} workers × {self.plan.threads} threads on {self.plan.devices[0]} must be "
                    "spawned, and spawned workers rebuild the task with a task_factory",
                    "train through `fedctl train` (it passes one), or use --workers 1, or set run.threads=1 on CPU",
                )
        import multiprocessing

        self._ctx = multiprocessing.get_context(self.plan.start_method)
        self._global = {k: torch.empty_like(v, device="cpu").share_memory_() for k, v in run.global_state.items()}
        self._workers = [_Worker(w, self.plan.devices[w]) for w in range(self.plan.workers)]
        for w in self._workers:
            w.slot = {k: torch.empty_like(v, device="cpu").share_memory_() for k, v in run.global_state.items()}
            self._start(w)
        run.emit(_message(f"parallel clients: {self.plan.workers} worker processes × {self.plan.threads} torch "
                          f"thread{'s' if self.plan.threads > 1 else ''} ({self.plan.start_method}, "
                          f"{', '.join(sorted(set(self.plan.devices)))})"))

    def _start(self, w: _Worker) -> None:
        run = self._run
        child, parent = self._ctx.Pipe(duplex=True)
        w.slot_free = self._ctx.Event()
        if w.holds is None:
            w.slot_free.set()
        fork = self.plan.start_method == "fork"
        spec = _Spec(wid=w.wid, conn=child, parent_conn=parent if fork else None, global_state=self._global,
                     slot=w.slot, slot_free=w.slot_free, threads=self.plan.threads, device=w.device,
                     keys=list(run.keys), seed=run.seed, keep_optimizer_state=run.fed.keep_optimizer_state,
                     task=run.task if fork else None, task_factory=None if fork else self.task_factory)
        # the worker's whole state before it starts: a Ctrl-C anywhere below leaves one that close() can stop
        w.conn, w.job, w.ready = parent, None, False
        w.process = self._ctx.Process(target=_worker_main, args=(spec,), daemon=True,
                                      name=f"fedctl-worker-{w.wid}")
        # tokenizers (Rust) warns on every fork after it used threads; the workers never tokenize
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with _sigint_deferred():
                w.process.start()
        finally:
            child.close()
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved

    def _stop(self, w: _Worker, graceful: bool) -> None:
        p = w.process
        if p is None:
            return
        if graceful and p.is_alive():
            with contextlib.suppress(OSError, ValueError):
                _send(w.conn)  # () = stop
            p.join(self.join_seconds)
        if p.is_alive():
            p.terminate()
            p.join(self.join_seconds)
        if p.is_alive():
            p.kill()
            p.join()
        self.exit_codes.append(p.exitcode)
        with contextlib.suppress(OSError):
            w.conn.close()
        with contextlib.suppress(ValueError):
            p.close()
        w.process, w.job = None, None

    def close(self) -> None:
        """Stop every worker (idempotent); no worker process survives this call."""
        for w in self._workers:
            self._stop(w, graceful=w.job is None)
        self._workers = []
        self._global = {}

    # -- one round --------------------------------------------------------------------------------
    def __call__(self, run: Run, server_round: int, sampled: list[int],
                 instructions: ClientInstructions) -> Iterator[ClientOutcome]:
        if self.plan is None:
            self._setup(run, len(sampled))
        if self.plan.workers == 1:
            yield from local_executor(run, server_round, sampled, instructions)
            return
        for w in self._workers:  # restart workers that died since the last round (or were stopped)
            if not w.alive():
                self._stop(w, graceful=False)
                self._start(w)
        with torch.no_grad():
            for k, v in run.global_state.items():
                self._global[k].copy_(v)
        todo = deque(enumerate(sampled))
        arrived: dict[int, tuple[ClientOutcome, _Worker | None]] = {}
        nxt = 0
        try:
            while nxt < len(sampled):
                self._dispatch(todo, run, server_round, instructions)
                if nxt in arrived:
                    outcome, w = arrived.pop(nxt)
                    yield outcome  # the engine folds it before asking for the next
                    if w is not None and w.holds == nxt:
                        w.holds = None
                        w.slot_free.set()
                    nxt += 1
                    continue
                self._receive(run, arrived)
        finally:
            # the engine stopped mid-round (error, Ctrl-C): stop workers still training for nobody
            # (restarted next round) and release the slots of updates that will never be folded
            for w in self._workers:
                if w.job is not None:
                    self._stop(w, graceful=False)
                elif w.holds is not None:
                    w.slot_free.set()
                w.holds = None

    def _dispatch(self, todo: deque, run: Run, server_round: int, instructions: ClientInstructions) -> None:
        for w in self._workers:
            if not todo:
                return
            if w.job is not None or w.process is None:
                continue
            pos, index = todo.popleft()
            cid = run.client_ids[index]
            # the client's kept state travels with its job (pickled: O(its state)), the new one comes back
            entry = run.client_entry(cid)
            w.job = (pos, cid)
            try:
                _send(w.conn, pos, server_round, index, cid, instructions, entry, run.payload)
            except (OSError, ValueError):
                pass  # it died; _receive sees its sentinel and reports the client as failed

    def _receive(self, run: Run, arrived: dict) -> None:
        busy = [w for w in self._workers if w.job is not None]
        if not busy:
            raise RuntimeError("parallel executor: clients are pending but no worker is training")  # a bug
        waitables = {}
        for w in busy:
            waitables[w.conn] = w
            waitables[w.process.sentinel] = w
        for ready in mp_connection.wait(list(waitables)):
            w = waitables[ready]
            if w.job is None:
                continue  # handled through its other waitable in this pass
            self._drain(run, w, arrived)
            if w.job is not None and not w.alive():
                pos, cid = w.job
                code = w.process.exitcode
                how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
                arrived[pos] = (ClientOutcome(cid, failure=f"its worker process {how}; the worker is restarted"), None)
                if not w.ready:
                    raise FedctlError(f"parallel worker {w.wid} died before it was ready ({how})",
                                      "run with --workers 1 to see the error in the server process")
                self._stop(w, graceful=False)
                self._start(w)

    def _drain(self, run: Run, w: _Worker, arrived: dict) -> None:
        """Handle every message the worker has sent so far."""
        while w.job is not None:
            try:
                if not w.conn.poll():
                    return
                msg = pickle.loads(w.conn.recv_bytes())
            except (EOFError, OSError):
                w.process.join(self.join_seconds)  # EOF: it is exiting; let the sentinel report it
                return
            kind = msg[0]
            if kind == "ready":
                w.ready = True
            elif kind == "fatal":
                raise FedctlError(msg[2], msg[3])
            elif kind == "failed":
                pos, cid = w.job
                arrived[pos] = (ClientOutcome(cid, failure=msg[2]), None)
                w.job = None
            elif kind == "done":
                _, pos, num_examples, metrics, stats, client_state = msg
                _, cid = w.job
                device = next(iter(run.global_state.values())).device
                state = {k: (t if device.type == "cpu" else t.to(device)) for k, t in w.slot.items()}
                update = ClientUpdate(cid, state, num_examples, metrics, stats)
                arrived[pos] = (ClientOutcome(cid, update, client_state=client_state), w)
                w.holds, w.job = pos, None


def _message(text: str):
    from fedctl.core.events import Message

    return Message(text)


@contextlib.contextmanager
def executor_for(workers: int, threads: int, task_factory: TaskFactory | None = None,
                 device: torch.device | str | None = None) -> Iterator[ParallelExecutor | None]:
    """The executor `run.workers` asks for: None (the sequential engine) for 1, else a
    ParallelExecutor that is closed on exit, however the run ends."""
    if workers == 1:
        yield None
        return
    executor = ParallelExecutor(workers, threads=threads, task_factory=task_factory, device=device)
    try:
        yield executor
    finally:
        executor.close()
