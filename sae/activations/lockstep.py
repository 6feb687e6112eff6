"""Several training loops in threads over one batch source: each batch is made (read or harvested) once
and handed to every loop.

Members take turns: exactly one runs at a time (no two fight over the cores), and the one furthest
behind goes first, so the source only ever runs ahead by the batch Lightning prefetches. A member
resumed further along than the others waits until they catch up; one that finishes or fails leaves
without holding up the rest. Each member sees the batches it would have seen alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

NOT_STARTED = -1


class Lockstep:
    def __init__(self, n_members: int):
        self._cond = threading.Condition()
        self._waiting_for: dict[int, int] = dict.fromkeys(range(n_members), NOT_STARTED)  # live members only
        self._running: int | None = None
        self._starts: dict[int, tuple[int, Callable[[], Any]]] = {}
        self._source: Any = None
        self._batches: Iterator | None = None
        self._made: dict[int, Any] = {}
        self._next_to_make = 0
        self._shared: dict[str, Any] = {}
        self.batches_made = 0

    @contextmanager
    def member(self, index: int):
        """The whole life of member `index` (a thread's body): it runs only on its turn, and leaves at the end."""
        self._wait_for_turn(index)
        try:
            yield MemberBatches(self, index)
        finally:
            with self._cond:
                del self._waiting_for[index]
                self._starts.pop(index, None)  # the shared stream starts where the members still there start
                self._running = None
                self._drop_consumed()
                self._cond.notify_all()

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """One object for all members (the activation cache), made by the first that asks."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]

    def _pick(self) -> int | None:
        return min(self._waiting_for, key=lambda m: (self._waiting_for[m], m), default=None)

    def _wait_for_turn(self, index: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._running is None and self._pick() == index)
            self._running = index

    def _take(self, index: int, step: int) -> Any:
        with self._cond:
            self._waiting_for[index] = step
            self._running = None
            self._cond.notify_all()
        self._wait_for_turn(index)
        with self._cond:
            if self._source is None:  # every live member has registered by now: start from the earliest
                start, build = min(self._starts.values(), key=lambda s: s[0])
                self._source, self._next_to_make = build(), start
                self._batches = iter(self._source)
            while self._next_to_make <= step:
                self._made[self._next_to_make] = next(self._batches)
                self._next_to_make += 1
                self.batches_made += 1
            batch = self._made[step]
            self._waiting_for[index] = step + 1
            self._drop_consumed()
            return batch

    def _drop_consumed(self) -> None:
        behind = min(self._waiting_for.values(), default=self._next_to_make)
        for step in [s for s in self._made if s < behind]:
            del self._made[step]


class MemberBatches:
    """One member's view: its batches from its own start step, and the source's stream position."""

    def __init__(self, lockstep: Lockstep, index: int):
        self._lockstep, self._index = lockstep, index
        self._start, self._total = 0, 0

    def register(self, start_step: int, total_steps: int, build: Callable[[], Any]) -> MemberBatches:
        """`build()` makes the source as this member would alone, starting at `start_step`."""
        self._start, self._total = start_step, total_steps
        self._lockstep._starts[self._index] = (start_step, build)
        return self

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        return self._lockstep.shared(name, make)

    def __iter__(self) -> Iterator[Any]:
        for step in range(self._start, self._total):
            yield self._lockstep._take(self._index, step)

    def state_at(self, step: int) -> dict:
        """A streamed source's state after `step` batches (for this member's checkpoint)."""
        return self._lockstep._source.state_at(step)

    def position(self, step: int) -> int:
        return self._lockstep._source.position(step)


class MembersFailed(Exception):
    """Some members failed (the others finished): every failure, as (member index, exception)."""

    def __init__(self, failures: list[tuple[int, BaseException]]):
        self.failures = failures
        super().__init__("; ".join(f"member {i}: {type(e).__name__}: {e}" for i, e in failures))


def run_in_lockstep(n_members: int, work: Callable[[int, MemberBatches], Any]) -> tuple[list[Any], int]:
    """`work(i, batches)` for every member, each in its own thread, taking turns: (results in order, batches made).

    A failing member leaves the group and the others go on; at the end, MembersFailed lists every failure.
    """
    lockstep = Lockstep(n_members)
    results: list[Any] = [None] * n_members
    errors: list[BaseException | None] = [None] * n_members

    def body(i: int) -> None:
        try:
            with lockstep.member(i) as batches:
                results[i] = work(i, batches)
        except BaseException as exc:  # reported from the calling thread below
            errors[i] = exc

    # Daemon threads: an interrupted job stops at once; every member resumes from its own checkpoint.
    threads = [threading.Thread(target=body, args=(i,), name=f"member-{i}", daemon=True) for i in range(n_members)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [(i, e) for i, e in enumerate(errors) if e is not None]
    if failed:
        raise MembersFailed(failed)
    return results, lockstep.batches_made
