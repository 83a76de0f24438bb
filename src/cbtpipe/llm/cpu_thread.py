"""The process's one thread for llama.cpp computing on the CPU.

llama.cpp's CPU backend runs each batch on an OpenMP team of n_threads threads (the job's cores),
and a team spins for a while after its batch, waiting for the next one: that is what makes one
stream of small batches fast. But each calling thread gets its own team, so calls from two threads
(a rollout's sessions played side by side, its two arms and the patient) leave one team spinning
on the cores the other needs. Measured on two cores (the default run's rollout job, 12 sessions):
55 s with sessions in two threads, 49 s from one thread, 91 s with the two threads merely taking
turns; with OpenMP told to sleep instead of spin, 56 s and 102 s. So in-process CPU calls queue
for one thread, in the order they come; calls to a server, an API or a GPU context still run side
by side.

A caller unwound while its call runs (a SIGTERM raised in it) must not close the context under the
call (a context freed mid-decode is a segmentation fault): the call stops at its next evaluation
(``check_abandoned``, before each batch) and the caller waits for that before it goes on.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_LOCAL = threading.local()  # on the CPU thread: the running call's abandon flag
THREAD_NAME = "llama-cpu"


class CallAbandoned(Exception):
    """Raised on the CPU thread inside a call whose caller was interrupted."""


def check_abandoned() -> None:
    """Stop the running call if its caller has been interrupted (a no-op on any other thread)."""
    flag = getattr(_LOCAL, "abandon", None)
    if flag is not None and flag.is_set():
        raise CallAbandoned("the caller of this llama.cpp call was interrupted")


def _run(flag: threading.Event, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    _LOCAL.abandon = flag
    try:
        return fn(*args, **kwargs)
    finally:
        _LOCAL.abandon = None


def on_cpu_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the CPU thread and return its result (or raise its exception)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    flag = threading.Event()
    fut = _POOL.submit(_run, flag, fn, args, kwargs)
    try:
        return fut.result()
    except BaseException:
        # Interrupted (or the call failed): the call, if still running, stops at its next batch,
        # and the caller waits for it, so nothing it unwinds closes the context under the call.
        flag.set()
        fut.cancel()
        while not fut.done():
            try:
                concurrent.futures.wait([fut])
            except BaseException:  # noqa: S112 (a second interruption: still wait for the call)
                continue
        raise
