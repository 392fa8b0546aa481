"""Reference pairs (issue 14 item 1): the classified halves of a (stream, epoch, seq), the coded frame and its
reference, waiting for each other, in a table bounded in entries.

The recognizer answers the two halves in any order (they share a rank, so usually in one batch). When both are
in, the pair is measured (server/agreement.py) and leaves the table. A half that will never come is said so
(`gone`: its reference was lost, or it was not classified) and the waiting half leaves at once; the key stays
as a tombstone, so a half that arrives after that leaves at once too. When the table is full the oldest entry is
folded out (`evicted`). Each pair that never completes is counted once, by cause, and the coded half's
predictions line still goes out, without an agreement.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from edgepipe.server.agreement import agreement

UNPAIRED_CAUSES = ("reference_lost", "unclassified", "evicted")


class _Entry:
    __slots__ = ("coded", "reference", "dead")

    def __init__(self):
        self.coded = None  # (classes, probs, row key, predictions record or None)
        self.reference = None  # (classes, probs)
        self.dead = False  # the other half will never come: a tombstone


class PairTable:
    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.pairs = 0
        self.unpaired: Counter = Counter({cause: 0 for cause in UNPAIRED_CAUSES})

    @property
    def pending(self) -> int:
        """Halves waiting for their other half now."""
        return sum(1 for e in self._entries.values() if not e.dead)

    def __len__(self) -> int:
        return len(self._entries)

    def classified(self, key: tuple, half: str, value: tuple) -> tuple[list, list]:
        """A half classified: returns (pairs done as (row key, measures, record)), (coded records released
        without a pair)."""
        entry = self._entries.get(key)
        if entry is not None and entry.dead:
            del self._entries[key]
            return [], [value[3]] if half == "coded" else []
        released: list = []
        if entry is None:
            released = self._make_room()
            entry = self._entries[key] = _Entry()
        setattr(entry, half, value)
        if entry.coded is None or entry.reference is None:
            return [], released
        del self._entries[key]
        self.pairs += 1
        classes, probs, row_key, record = entry.coded
        measures = agreement(entry.reference[0], entry.reference[1], classes, probs)
        return [(row_key, measures, record)], released

    def gone(self, key: tuple, cause: str) -> list:
        """One half of `key` will never be classified: the pair is counted unpaired once; returns the coded
        record released, if the coded half was waiting."""
        entry = self._entries.get(key)
        if entry is not None and entry.dead:
            return []
        self.unpaired[cause] += 1
        released = [] if entry is None or entry.coded is None else [entry.coded[3]]
        if entry is None:
            released += self._make_room()
        tomb = self._entries[key] = _Entry()
        tomb.dead = True
        self._entries.move_to_end(key)
        return released

    def release_lines(self) -> list:
        """At stop: the predictions records of coded halves still waiting (each given out once; the halves stay
        counted as pending)."""
        records = []
        for entry in self._entries.values():
            if entry.coded is not None and entry.coded[3] is not None:
                records.append(entry.coded[3])
                entry.coded = (*entry.coded[:3], None)
        return records

    def _make_room(self) -> list:
        released = []
        while len(self._entries) >= self.max_pending:
            _, oldest = self._entries.popitem(last=False)
            if oldest.dead:
                continue  # already counted
            self.unpaired["evicted"] += 1
            if oldest.coded is not None:
                released.append(oldest.coded[3])
        return released
