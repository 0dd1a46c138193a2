"""Skip index: which image hashes are already captioned under this caption config.

Kept compact because it holds every captioned image of a config: the first 16 bytes of each
sha256 (a collision needs ~2^64 images), in a sorted numpy array searched in bulk. New hashes of
this run go to a small set that is folded into the array every ``MERGE_EVERY`` additions.
"""

from __future__ import annotations

import numpy as np

PREFIX = 16
MERGE_EVERY = 65_536


class SkipIndex:
    """Keys are the first 16 bytes of a sha256, as numpy ``S16`` values: built from the table's
    hex hashes (:meth:`from_arrow`), probed and grown with the prefixes read tasks send
    (:meth:`keys_from_arrow`, :meth:`contains_keys`, :meth:`add_keys`)."""

    def __init__(self) -> None:
        self._sorted = np.array([], dtype=f"S{PREFIX}")
        # numpy's S dtype drops trailing NUL bytes on the way out (tolist), so keys in this set
        # are kept stripped; the sorted array pads them back identically.
        self._recent: set[bytes] = set()

    @classmethod
    def from_arrow(cls, column: object) -> SkipIndex:
        """Build from an Arrow string array of hex hashes without a Python loop per row."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = pa.chunked_array(column) if not isinstance(column, pa.ChunkedArray) else column
        arr = pc.drop_null(arr)
        index = cls()
        if len(arr):
            hexes = np.array(pc.utf8_slice_codeunits(arr, 0, PREFIX * 2).to_pylist(), dtype="S32")
            raw = np.frombuffer(bytes.fromhex(b"".join(hexes).decode()), dtype=f"S{PREFIX}")
            index._sorted = np.unique(raw)
        return index

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes) + len(self._recent) * (PREFIX + 60)

    @staticmethod
    def keys_from_arrow(column: object) -> np.ndarray:
        """A ``fixed_size_binary(16)`` Arrow column of hash prefixes (what read tasks send) as
        the index's keys, without a Python loop."""
        import pyarrow as pa

        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        assert isinstance(arr, pa.FixedSizeBinaryArray) and arr.type.byte_width == PREFIX
        return np.frombuffer(arr.buffers()[1], dtype=f"S{PREFIX}", count=len(arr),
                             offset=arr.offset * PREFIX)

    def contains_keys(self, keys: np.ndarray) -> np.ndarray:
        """Bulk lookup of 16-byte keys (a numpy ``S16`` array: hash prefixes, as read tasks send)."""
        pos = np.searchsorted(self._sorted, keys)
        pos = np.minimum(pos, max(len(self._sorted) - 1, 0))
        found = self._sorted[pos] == keys if len(self._sorted) else np.zeros(len(keys), bool)
        if self._recent:
            found |= np.array([k in self._recent for k in keys.tolist()], dtype=bool)
        return found

    def add_keys(self, keys: np.ndarray) -> None:
        self._recent.update(keys.tolist())  # tolist strips NULs the way _prefix does
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if len(self._recent) >= MERGE_EVERY:
            merged = np.concatenate([self._sorted, np.array(list(self._recent), f"S{PREFIX}")])
            self._sorted = np.unique(merged)
            self._recent.clear()
