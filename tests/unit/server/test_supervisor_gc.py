"""settle_garbage_collector: what exists at start is frozen out of the collector's walks; cycles made later
are still collected."""

from __future__ import annotations

import gc
import weakref

from opendepot.server.supervisor import GC_YOUNG_THRESHOLD, settle_garbage_collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_startup_objects_frozen_and_later_cycles_collected() -> None:
    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
