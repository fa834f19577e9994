"""Views split across processes with torch.distributed: each process holds, renders and denoises its own views.

A synchronised step is per view except for the aggregation g, whose colour fit sums over views (its right-hand side,
row sums, products `A p` and squared errors; `sync_splat.bridges.splat_fit`). So the views are cut into contiguous
shards, one per process (`shard_views`), every process keeps the canonical z whole, and the fit's sums are added over
processes (`ViewShard.sum`, an all-reduce). Every process then holds the same z, bit for bit, and takes the same
decisions (CG's stopping tests read only z-sized values), so the run stays in step without more messages. Random
values per view are drawn for every view on every process, from the same generator, and each keeps its slice: a run
draws the same numbers whatever its process count.

Processes come from `torchrun --nproc-per-node N -m sync_splat.cli restyle ...`, from `sync-splat restyle --nproc N`
(`launch`, which starts them as torchrun would) or from nerfstudio's launcher; `process_group` joins the group their
environment describes: gloo for CPU tensors, NCCL for CUDA ones. Without a group everything here is a no-op.

Failures: a process that stops makes the others fail at their next collective (`PeerFailure`). `rank_errors`
records a process's own error in the group's store; process 0 then says in one line which process failed and why
(or that it stopped without a word), and the other processes stay silent. Process 0 writes every output, after
`all_succeeded`, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from sync_splat.errors import INTERRUPTED_EXIT_STATUS, InputError

_FAILURE_KEY = "sync-splat/failure"
PEER_WAIT = 3.0
"""Seconds process 0 waits for a failed process's message before saying it stopped without one."""
GRACE_SECONDS = 10.0
"""How long `launch` lets the other processes finish after process 0 ended, before stopping them."""


class PeerFailure(RuntimeError):
    """A collective failed because another process of the run stopped (its own error is reported by process 0)."""


@dataclass(frozen=True)
class ViewShard:
    """The views `[first, first + count)` of `total` that process `rank` of `world` holds.

    Tensors over views are stacked in view order, so a process's stack is `full[first : first + count]`.
    """

    first: int
    count: int
    total: int
    rank: int = 0
    world: int = 1

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.count)

    def local(self, full: Tensor) -> Tensor:
        """This process's views of a stack over every view."""
        return full[self.first : self.first + self.count]

    def sum(self, tensor: Tensor) -> Tensor:
        """`tensor` summed over the processes (itself when the views are not split)."""
        return all_reduce(tensor, dist.ReduceOp.SUM) if self.sharded else tensor

    def max(self, tensor: Tensor) -> Tensor:
        """The elementwise maximum of `tensor` over the processes (itself when the views are not split)."""
        return all_reduce(tensor, dist.ReduceOp.MAX) if self.sharded else tensor

    def gather(self, local: Tensor) -> Tensor:
        """The stack over every view, on every process, from each process's own views (itself when not split)."""
        if not self.sharded:
            return local
        full = torch.zeros((self.total, *local.shape[1:]), dtype=local.dtype, device=local.device)
        full[self.first : self.first + self.count] = local
        return self.sum(full)

    def describe(self) -> str:
        """'views 0-4 of 9 in process 0 of 2', for messages."""
        last = self.first + self.count - 1
        return f"views {self.first}-{last} of {self.total} in process {self.rank} of {self.world}"


def shard_views(n: int, rank: int = 0, world: int = 1) -> ViewShard:
    """Process `rank`'s contiguous share of `n` views among `world` processes (the first `n % world` get one more).

    Raises:
        InputError: there are fewer views than processes.
    """
    if world > n:
        raise InputError(f"{n} views cannot be split over {world} processes: use at most {n} processes, or more views")
    base, extra = divmod(n, world)
    first = rank * base + min(rank, extra)
    return ViewShard(first=first, count=base + (rank < extra), total=n, rank=rank, world=world)


def process_shard(n: int) -> ViewShard:
    """This process's share of `n` views in the current process group (all of them without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return shard_views(n)
    return shard_views(n, dist.get_rank(), dist.get_world_size())


def rank() -> int:
    """This process's rank in the current group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def processes_per_machine() -> int:
    """How many processes of the run share this machine's memory: torchrun's LOCAL_WORLD_SIZE (1 without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))


def all_reduce(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """`tensor` reduced over the processes of the current group (a new tensor; `tensor` itself without a group).

    CPU tensors go through gloo and CUDA tensors through NCCL (`process_group` sets up both where CUDA is present); a
    CPU tensor in a NCCL-only group travels through its GPU."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    device = tensor.device
    if device.type == "cpu" and "cpu" not in _backend_devices():
        device = torch.device("cuda", torch.cuda.current_device())
    result = tensor.to(device, copy=True, memory_format=torch.contiguous_format)
    try:
        dist.all_reduce(result, op=op)
    except (RuntimeError, dist.DistError) as error:
        raise PeerFailure(str(error)) from error
    return result.to(tensor.device)


def all_succeeded() -> None:
    """Wait until every process got here: raises `PeerFailure` where one has stopped (call before writing)."""
    all_reduce(torch.ones(()))


def _backend_devices() -> set[str]:
    backend = str(dist.get_backend()).lower()
    if ":" not in backend:
        return {"cpu", "cuda"} if backend == "gloo" else {"cuda"}
    return {pair.split(":")[0] for pair in backend.split(",")}


@contextlib.contextmanager
def process_group() -> Iterator[ViewShard | None]:
    """Join the process group that torchrun (or `launch`) describes in the environment (`WORLD_SIZE`, `RANK`,
    `MASTER_ADDR`, `MASTER_PORT`) for the duration; nothing without one, or when a group exists already.

    The group carries CPU tensors over gloo and, where CUDA is present, CUDA tensors over NCCL; each process then uses
    the GPU of its LOCAL_RANK."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield None
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, init_method="env://")
    try:
        yield None
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_errors() -> Iterator[None]:
    """Make a failure of a run split across processes one line, said by process 0 (module docstring).

    Process 0 lets its own errors through, and turns `PeerFailure` into an `InputError` that names the process that
    failed first and its message (for `sync_splat.errors.one_line_errors`). Another process records its own error in
    the group's store and ends silently (exit status 2 for an `InputError`, 130 for Ctrl-C), except that a bug's
    traceback is still printed; a `PeerFailure` it only follows."""
    try:
        yield
    except BaseException as error:
        if not (dist.is_available() and dist.is_initialized()) or isinstance(error, SystemExit):
            raise
        here, world = dist.get_rank(), dist.get_world_size()
        if here == 0:
            if isinstance(error, PeerFailure):
                raise InputError(f"{_peer_message(world)}; nothing was written") from None
            raise
        if not isinstance(error, (PeerFailure, KeyboardInterrupt)):
            what = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
            _record_failure(f"process {here} of {world} failed: {what}")
        if isinstance(error, KeyboardInterrupt):
            raise SystemExit(INTERRUPTED_EXIT_STATUS) from None
        if isinstance(error, (InputError, PeerFailure)):
            raise SystemExit(2) from None
        raise


def _record_failure(message: str) -> None:
    """Keep the first failure's message in the group's store (process 0 reads it)."""
    with contextlib.suppress(Exception):
        store = dist.distributed_c10d._get_default_store()
        if store.add(_FAILURE_KEY + "/count", 1) == 1:
            store.set(_FAILURE_KEY, message)


def _peer_message(world: int) -> str:
    """What process 0 says when a collective failed: the recorded failure, or that a process stopped silently."""
    with contextlib.suppress(Exception):
        store = dist.distributed_c10d._get_default_store()
        deadline = time.monotonic() + PEER_WAIT
        while not store.check([_FAILURE_KEY]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if store.check([_FAILURE_KEY]):
            return store.get(_FAILURE_KEY).decode()
    return f"another of the {world} processes stopped without a message (killed, or out of memory?)"


def launch(nproc: int, target: Callable[..., None], *args: object) -> int:
    """Run `target(*args)` in `nproc` fresh processes on this machine, set up as torchrun sets up its workers (RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), with the CPU's threads shared among them.
    As torchrun's agent does, this process hosts the group's store (on a port the system picks, so no other program
    can take it first) and outlives the processes.

    Returns the exit status of the run: process 0's when it failed, else the first other failure's (0: success).
    Ctrl-C reaches every process (they share the terminal); this waits for them and returns 130."""
    context = multiprocessing.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False)
    threads = max(1, torch.get_num_threads() // nproc)
    processes = [
        context.Process(target=_run_rank, args=(rank, nproc, store.port, threads, target, args))
        for rank in range(nproc)
    ]
    for process in processes:
        process.start()
    try:
        processes[0].join()
        for process in processes[1:]:
            process.join(GRACE_SECONDS)
    except KeyboardInterrupt:
        for process in processes:
            process.join()
        return INTERRUPTED_EXIT_STATUS
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    codes = [process.exitcode or 0 for process in processes]
    return codes[0] if codes[0] else next((abs(code) for code in codes if code), 0)


def _run_rank(rank: int, world: int, port: int, threads: int, target: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True",  # launch hosts the store
    )  # fmt: skip
    torch.set_num_threads(threads)
    status = 0
    try:
        target(*args)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C before or after the target's own handling
        status = INTERRUPTED_EXIT_STATUS
    except BaseException:  # a bug that rank_errors let through: its traceback, then a failed exit
        traceback.print_exc()
        status = 1
    _end_worker(status)


def _end_worker(status: int) -> None:
    """End a worker process with `status`, skipping the interpreter's teardown: with its work done and its process
    group destroyed, a worker can still be aborted there by a communication thread the teardown finds running
    ("terminate called without an active exception", exit status -6; about one run in four of the plugin's
    two-process test). Nothing is left to flush but the standard streams and the logs: files are written atomically."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


__all__ = [
    "PeerFailure",
    "ViewShard",
    "all_reduce",
    "all_succeeded",
    "launch",
    "process_group",
    "process_shard",
    "processes_per_machine",
    "rank",
    "rank_errors",
    "shard_views",
]
