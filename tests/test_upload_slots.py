"""A fleet's upload slots (``tfship.fleet.UploadSlots``): at most ``max_parallel`` transfers at
once, begun in the hosts' order, so the canary's upload is never pushed to a later wave by a
host whose checks before the upload ran faster."""

from __future__ import annotations

import threading
import time

import pytest
from tfship.fleet import RolloutStopped, UploadSlots


def settles(cond, timeout: float) -> bool:
    """Whether ``cond()`` holds within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_transfers_take_turns_in_host_order_at_most_n_at_once():
    slots = UploadSlots(2, threading.Event())
    entered: list[int] = []
    go = {i: threading.Event() for i in range(5)}
    lock = threading.Lock()
    active, peak = [0], [0]

    def host(i: int) -> None:
        with slots.slot(i):
            with lock:
                entered.append(i)
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            go[i].wait(30)
            with lock:
                active[0] -= 1

    threads = {i: threading.Thread(target=host, args=(i,), daemon=True) for i in range(5)}
    for i in (4, 3, 2, 1):  # every other host is ready before the canary (host 0)
        threads[i].start()
    assert settles(lambda: entered == [1], 10)
    # Two slots, one free: it is kept for the canary, not given to host 2.
    assert not settles(lambda: len(entered) > 1, 0.3)
    threads[0].start()
    assert settles(lambda: entered == [1, 0], 10)
    go[0].set()  # the canary's transfer ends: the next in order, host 2, goes
    assert settles(lambda: entered == [1, 0, 2], 10)
    assert not settles(lambda: len(entered) > 3, 0.3)
    go[1].set()
    assert settles(lambda: entered == [1, 0, 2, 3], 10)
    go[2].set()
    go[3].set()
    assert settles(lambda: entered == [1, 0, 2, 3, 4], 10)
    go[4].set()
    for t in threads.values():
        t.join(10)
    assert peak[0] == 2


def test_a_host_that_never_transfers_frees_its_turn_and_a_stop_frees_the_waiting():
    stop = threading.Event()
    slots = UploadSlots(1, stop)
    slots.release(0)  # host 0's version was on the host already: no transfer
    with slots.slot(1):  # host 1 goes at once
        pass
    slots.release(1)  # released twice (the slot, then the host's own finally): counted once
    got: list[object] = []
    hold = threading.Event()

    def host(i: int) -> None:
        try:
            with slots.slot(i):
                got.append(i)
                hold.wait(30)
        except RolloutStopped:
            got.append("stopped")

    first = threading.Thread(target=host, args=(2,), daemon=True)
    first.start()
    assert settles(lambda: got == [2], 10)
    waiting = threading.Thread(target=host, args=(3,), daemon=True)
    waiting.start()
    assert not settles(lambda: len(got) > 1, 0.3)
    stop.set()  # another host failed: the waiting one leaves without transferring
    assert settles(lambda: got == [2, "stopped"], 10)
    hold.set()
    first.join(10)


def test_a_slot_count_below_one_is_one():
    slots = UploadSlots(0, threading.Event())
    with slots.slot(0):
        pass
    with pytest.raises(RolloutStopped):
        stopped = threading.Event()
        stopped.set()
        with UploadSlots(1, stopped).slot(1):
            pass
