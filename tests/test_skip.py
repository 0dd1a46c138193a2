"""The skip index on the path the run takes: built from the table's hex hashes (from_arrow),
probed and grown with the 16-byte prefixes read tasks send (keys_from_arrow, contains_keys,
add_keys), against a plain set of the same images."""

import hashlib

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from enrich import skip
from enrich.skip import PREFIX, SkipIndex


def _hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _keys(digests: list[bytes]) -> pa.Array:
    """The hash16 column of a read block (source/read.py): each digest's first 16 bytes."""
    return pa.array([d[:PREFIX] for d in digests], pa.binary(PREFIX))


images = st.lists(st.binary(max_size=8), max_size=60)


@settings(deadline=None)  # no timing: a loaded CI machine is slow on the first, cold call
@given(images, images, images)
def test_lookups_and_additions_match_a_set(table: list[bytes], probe: list[bytes],
                                           added: list[bytes]) -> None:
    index = SkipIndex.from_arrow(pa.chunked_array([pa.array([_hex(b) for b in table] + [None])]))
    digest = {b: hashlib.sha256(b).digest() for b in table + probe + added}
    keys = SkipIndex.keys_from_arrow(_keys([digest[b] for b in probe]))
    assert index.contains_keys(keys).tolist() == [b in set(table) for b in probe]
    # the reader adds the images it sends on: first seen, not in the table
    new = [b for b in dict.fromkeys(added) if b not in set(table)]
    index.add_keys(SkipIndex.keys_from_arrow(_keys([digest[b] for b in new])))
    assert index.contains_keys(keys).tolist() == [b in set(table) | set(added) for b in probe]
    assert len(index) == len(set(table) | set(added))


def test_keys_with_trailing_nul_bytes_survive_the_merge(monkeypatch) -> None:
    """A prefix that ends in NUL bytes (numpy's S dtype strips them on the way out) is found
    while it waits in the recent set and after it is folded into the sorted array."""
    monkeypatch.setattr(skip, "MERGE_EVERY", 3)
    tricky = [bytes([0xAB]) + bytes(31), bytes([1, 2]) + bytes(30)]
    others = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    index = SkipIndex.from_arrow(pa.array([tricky[0].hex()]))
    index.add_keys(SkipIndex.keys_from_arrow(_keys(tricky[1:])))  # waits: 1 < MERGE_EVERY
    probe = SkipIndex.keys_from_arrow(_keys(tricky + others))
    assert index.contains_keys(probe).tolist() == [True, True, False, False, False, False]
    index.add_keys(SkipIndex.keys_from_arrow(_keys(others)))  # 5 recent: merged
    assert index._recent == set() and index.contains_keys(probe).all()


def test_a_sliced_column_is_read_at_its_offset_and_the_index_is_small() -> None:
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(1000)]
    index = SkipIndex.from_arrow(pa.chunked_array([pa.array([d.hex() for d in digests])]))
    assert len(index) == 1000 and index.nbytes <= 40 * 1000
    sliced = _keys(digests + [bytes(32)]).slice(990)  # a block's tail, as _decide slices it
    assert index.contains_keys(SkipIndex.keys_from_arrow(sliced)).tolist() == [True] * 10 + [False]
