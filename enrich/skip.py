"""Skip index: which image hashes are already captioned under this caption config.

Kept compact because it holds every captioned image of a config: the first 16 bytes of each
sha256 (a collision needs ~2^64 images), in a sorted numpy array searched in bulk. New hashes of
this run go to a small set that is folded into the array every ``MERGE_EVERY`` additions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PREFIX = 16
MERGE_EVERY = 65_536


def _prefix(hex_hash: str) -> bytes:
    # numpy's S dtype drops trailing NUL bytes on the way out (tolist), so keep keys stripped
    # wherever they live in Python sets; the sorted array pads them back identically.
    return bytes.fromhex(hex_hash[: PREFIX * 2]).rstrip(b"\x00")


class SkipIndex:
    def __init__(self, hex_hashes: Iterable[str] = ()) -> None:
        arr = np.array([_prefix(h) for h in hex_hashes], dtype=f"S{PREFIX}")
        self._sorted = np.unique(arr)
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

    @staticmethod
    def _keys(hex_hashes: list[str]) -> np.ndarray:
        # one hex decode for the whole batch instead of one per hash
        joined = "".join(h[: PREFIX * 2].ljust(PREFIX * 2, "0") for h in hex_hashes)
        return np.frombuffer(bytes.fromhex(joined), dtype=f"S{PREFIX}")

    def contains_many(self, hex_hashes: list[str]) -> np.ndarray:
        return self.contains_keys(self._keys(hex_hashes))

    def contains_keys(self, keys: np.ndarray) -> np.ndarray:
        """Bulk lookup of 16-byte keys (a numpy ``S16`` array: hash prefixes, as read tasks send)."""
        pos = np.searchsorted(self._sorted, keys)
        pos = np.minimum(pos, max(len(self._sorted) - 1, 0))
        found = self._sorted[pos] == keys if len(self._sorted) else np.zeros(len(keys), bool)
        if self._recent:
            found |= np.array([k in self._recent for k in keys.tolist()], dtype=bool)
        return found

    def __contains__(self, hex_hash: str) -> bool:
        return bool(self.contains_many([hex_hash])[0])

    def add(self, hex_hash: str) -> None:
        self._recent.add(_prefix(hex_hash))
        self._maybe_merge()

    def add_keys(self, keys: np.ndarray) -> None:
        self._recent.update(keys.tolist())  # tolist strips NULs the way _prefix does
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if len(self._recent) >= MERGE_EVERY:
            merged = np.concatenate([self._sorted, np.array(list(self._recent), f"S{PREFIX}")])
            self._sorted = np.unique(merged)
            self._recent.clear()
