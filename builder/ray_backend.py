"""Data-parallel vLLM replicas on a Ray cluster, behind the same Backend interface as the local engine:
`RayPool(spec, replicas).generate(requests) -> results` in request order.

Each replica is a Ray actor holding our own `generation.engine.Engine`, so seeds, the structured-output
backend, prefix ordering and the CPU-safe KV bound are exactly the local path's, and an answer does
not depend on which replica (or the local engine) produced it. The driver splits each durable chunk
from StoreRunner into contiguous slices of the prefix-sorted requests, one per live replica, so
requests sharing a persona / system prompt mostly land on one replica and hit its prefix cache.

Why not `ray.data.llm`: its processor owns batching, scheduling and retries and hands back a Dataset.
Here the SQLite request store already owns resume and exactly-once (a chunk is stored whole or
redone), and every request carries its own seed; all we need from Ray is placing engines on the
cluster and the two failure signals - a dead replica (RayActorError) and a silent one (ray.wait
timeout) - on which only the lost slice is redone. A second batching/retry layer would hide exactly
the decisions the store needs to make, and a different engine wrapper could change the outputs.
"""
from __future__ import annotations

import atexit
import os
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from generation.backends import ChatRequest, Result
from generation.backends.engine import Engine, ModelSpec, engine_env, prefix_key, vllm_version
from generation.errors import PersonaError
from generation.log import log, show_library_output


class ReplicaError(PersonaError, RuntimeError):
    """A replica whose engine would not answer like this process's (another vLLM)."""


def say(msg: str) -> None:
    log.info(f"ray: {msg}")


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS; "auto" = the one `ray start` made on this
    machine), else start a private local Ray with `num_cpus` CPUs that ends with this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # the replicas' vLLM lines stay in Ray's session logs unless --verbose
    quiet = dict(logging_level="warning", log_to_driver=show_library_output())
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)


@ray.remote
class Replica:
    """One vLLM engine on one slice of the cluster (Ray restarts nothing: the pool decides)."""

    def __init__(self, spec: ModelSpec):
        self.engine = Engine(spec)

    def ready(self) -> tuple[str, int, str | None]:
        return ray.get_runtime_context().get_node_id(), os.getpid(), vllm_version()

    def generate(self, requests: list[ChatRequest]) -> list[Result]:
        return self.engine.generate(requests)


@dataclass(eq=False)  # identity equality: two slots are never "the same replica"
class _Slot:
    actor: object
    name: str
    since: float = field(default_factory=time.monotonic)
    pid: int = 0                 # of the actor's process, once it is up (for the stall hook)


def _split(items: list, n: int) -> list[list]:
    """`items` in n contiguous, near-equal, non-empty pieces (order kept)."""
    n = max(1, min(n, len(items)))
    k, r = divmod(len(items), n)
    out, start = [], 0
    for j in range(n):
        end = start + k + (j < r)
        out.append(items[start:end])
        start = end
    return out


class RayPool:
    """`replicas` engine actors for one model; `generate` is the local Engine's contract.

    A replica that dies mid-batch loses only its in-flight slice, which is split over the remaining
    replicas and redone; a replica silent for `timeout_s` is killed and treated the same. Engine start
    has its own, longer bound (`startup_timeout_s`: a first start may download ~40 GB). Each loss
    starts a replacement actor (at most 2 x replicas over the pool's life, so a crash loop ends in
    an error rather than spinning); it takes work once its engine is up.
    """

    def __init__(self, spec: ModelSpec, replicas: int = 1, address: str | None = None, timeout_s: float = 600.0,
                 startup_timeout_s: float = 3600.0):
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        # a private local Ray gets one CPU per replica at least, so every replica can be placed
        connect(address, num_cpus=max(os.cpu_count() or 1, replicas))
        self.spec, self.timeout_s, self.startup_timeout_s = spec, timeout_s, startup_timeout_s
        self.options = self._actor_options(spec)
        self.spares = 2 * replicas
        self.started = 0
        self.live: list[_Slot] = []
        self.starting: dict = {}  # ready() ObjectRef -> _Slot whose engine is loading
        total = ray.cluster_resources()
        have = {"num_cpus": total.get("CPU", 0), "num_gpus": total.get("GPU", 0)}
        if any(v * replicas > have[k] for k, v in self._needs().items()):
            # not an error: an autoscaler (KubeRay, Ray's own) may still add nodes
            say(f"{replicas} replica(s) need {self._needs()} each but the cluster has {have}: "
                f"waiting up to {startup_timeout_s:.0f} s for them to be placed")
        slots = [self._new_slot() for _ in range(replicas)]
        try:
            up = ray.get([s.actor.ready.remote() for s in slots], timeout=startup_timeout_s)
        except GetTimeoutError:
            self._kill(slots)
            raise RuntimeError(f"{replicas} Ray replica(s) of {spec.path} did not start within {startup_timeout_s:.0f} s: "
                               f"each needs {self._needs()}, the cluster has {ray.available_resources()} free") from None
        except BaseException:
            self._kill(slots)
            raise
        try:
            for s, (_, pid, version) in zip(slots, up):
                self._check_version(s, version)
                s.pid = pid
        except ReplicaError:
            self._kill(slots)
            raise
        self.live = slots
        atexit.register(self.close)  # runs before ray's own shutdown hook (registered earlier)
        say(f"{replicas} replica(s) of {spec.path} up on {len({u[0] for u in up})} node(s), each with {self._needs()}")

    @staticmethod
    def _check_version(slot: _Slot, version: str | None) -> None:
        """Request ids name this process's vLLM (builder.backends.engine_fingerprint): a replica must run it."""
        if version != vllm_version():
            raise ReplicaError(f"ray: {slot.name} runs {version or 'no vLLM'} but this process has "
                               f"{vllm_version() or 'no vLLM'}; the answers are recorded under this process's "
                               "version, so install the same vLLM on the driver and on every node")

    @staticmethod
    def _actor_options(spec: ModelSpec, gpus: float | None = None) -> dict:
        """Ray options of a replica: on a cluster with GPUs, `tensor_parallel_size` of them, else one core."""
        env = {"TQDM_DISABLE": "1"}
        # the driver's batch-invariant switch is in the request ids, so the replicas' kernels follow it
        env["VLLM_BATCH_INVARIANT"] = os.environ.get("VLLM_BATCH_INVARIANT", "0")
        if os.path.isdir(spec.path):  # a local folder (same path on every node): never ask the Hub
            env["HF_HUB_OFFLINE"] = "1"
        gpus = ray.cluster_resources().get("GPU", 0) if gpus is None else gpus
        if gpus > 0:  # so GPU nodes must have joined by now
            # vLLM runs its tensor-parallel workers on the GPUs Ray gives the actor; the engine core in its own
            # process inside the actor (vLLM's default on CUDA, see generation.engine.engine_env)
            env.update(engine_env("cuda"))
            return {"num_gpus": spec.tensor_parallel_size, "num_cpus": 1, "runtime_env": {"env_vars": env}}
        # CPU only: the engine core inside the actor, one core and one OpenMP thread per replica (scale with more
        # replicas). vLLM means to serve with one torch thread anyway; with two, an engine on a shared machine
        # slows 3-10x whenever another process takes a core (OpenMP threads wait on the descheduled one).
        env.update(engine_env("cpu"), OMP_NUM_THREADS="1")
        return {"num_cpus": 1, "runtime_env": {"env_vars": env}}

    def _needs(self) -> dict:
        return {k: v for k, v in self.options.items() if k != "runtime_env"}

    def _new_slot(self) -> _Slot:
        self.started += 1
        return _Slot(Replica.options(**self.options).remote(self.spec), f"replica-{self.started - 1}")

    def _replace(self) -> bool:
        if self.spares <= 0:
            return False
        self.spares -= 1
        slot = self._new_slot()
        self.starting[slot.actor.ready.remote()] = slot
        return True

    @staticmethod
    def _kill(slots) -> None:
        for s in slots:
            ray.kill(s.actor)  # no-op on an actor that is already dead

    def _lose(self, slot: _Slot, idx: list[int], todo: deque, why: str) -> None:
        """Drop a replica; its slice goes back in the queue, split over the replicas still alive."""
        self._kill([slot])
        if slot in self.live:
            self.live.remove(slot)
        todo.extend(_split(idx, len(self.live)))
        replaced = self._replace()
        say(f"{slot.name} {why}: redoing its {len(idx)} request(s) on {len(self.live)} remaining replica(s)"
            + ("; starting a replacement" if replaced else "; no replacement left"))

    @staticmethod
    def _send(slot: _Slot, requests: list[ChatRequest]):
        """Hand a slice to a replica; returns the reference its results arrive on."""
        return slot.actor.generate.remote(requests)

    def generate(self, requests: list[ChatRequest]) -> list[Result]:
        """Results in the order of `requests`, whichever replica produced them."""
        if not requests:
            return []
        order = sorted(range(len(requests)), key=lambda i: prefix_key(requests[i]))
        todo = deque(_split(order, len(self.live)))
        results: list[Result | None] = [None] * len(requests)
        running: dict = {}  # generate() ObjectRef -> (slot, request indices, sent at)
        idle = list(self.live)
        while todo or running:
            while todo and idle:
                slot, idx = idle.pop(0), todo.popleft()
                running[self._send(slot, [requests[i] for i in idx])] = (slot, idx, time.monotonic())
            if not running and not self.starting:
                raise RuntimeError(f"no Ray replica of {self.spec.path} left to run {sum(map(len, todo))} request(s)")
            # wake up on the first finished slice / ready replacement, or at the first deadline
            deadline = min([t + self.timeout_s for _, _, t in running.values()]
                           + [s.since + self.startup_timeout_s for s in self.starting.values()])
            wait_s = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(running) + list(self.starting), num_returns=1, timeout=wait_s)
            for ref in ready:
                if ref in self.starting:
                    slot = self.starting.pop(ref)
                    try:
                        _, slot.pid, version = ray.get(ref)
                    except RayActorError as e:
                        say(f"{slot.name} failed to start ({type(e).__name__})"
                            + ("; starting another" if self._replace() else "; no replacement left"))
                        continue
                    try:
                        self._check_version(slot, version)
                    except ReplicaError:
                        self._kill([slot])
                        raise
                    self.live.append(slot)
                    idle.append(slot)
                    say(f"{slot.name} (replacement) is up")
                    continue
                slot, idx, _ = running.pop(ref)
                try:
                    out = ray.get(ref)
                except RayActorError as e:
                    self._lose(slot, idx, todo, f"died mid-batch ({type(e).__name__})")
                    continue
                for i, r in zip(idx, out):
                    results[i] = r
                idle.append(slot)
            now = time.monotonic()
            for ref, (slot, idx, sent) in list(running.items()):
                if now - sent > self.timeout_s:
                    del running[ref]
                    self._lose(slot, idx, todo, f"silent for {self.timeout_s:.0f} s, killed")
            for ref, slot in list(self.starting.items()):
                if now - slot.since > self.startup_timeout_s:
                    del self.starting[ref]
                    self._kill([slot])
                    say(f"{slot.name} did not start within {self.startup_timeout_s:.0f} s, killed"
                        + ("; starting another" if self._replace() else "; no replacement left"))
        return results

    def close(self) -> None:
        """Kill the replicas (frees their GPUs for the next model); the Ray connection stays."""
        self._kill(self.live + list(self.starting.values()))
        self.live, self.starting = [], {}
