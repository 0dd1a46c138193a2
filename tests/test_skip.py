import hashlib

from hypothesis import given
from hypothesis import strategies as st

from enrich import skip
from enrich.skip import SkipIndex


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@given(st.lists(st.binary(max_size=8), max_size=60), st.lists(st.binary(max_size=8), max_size=60))
def test_membership_matches_a_set(known: list[bytes], probe: list[bytes]) -> None:
    index = SkipIndex(_h(b) for b in known)
    want = [b in set(known) for b in probe]
    assert index.contains_many([_h(b) for b in probe]).tolist() == want


def test_added_hashes_are_found_before_and_after_merge(monkeypatch) -> None:
    monkeypatch.setattr(skip, "MERGE_EVERY", 3)
    index = SkipIndex()
    hs = [_h(bytes([i])) for i in range(10)]
    for h in hs:
        index.add(h)
    # prefixes with trailing NUL bytes must survive numpy's S dtype, so craft one
    tricky = "ab" + "00" * 15 + "0" * 32
    index.add(tricky)
    assert all(index.contains_many(hs + [tricky]))
    assert not index.contains_many([_h(b"other")])[0]


def test_from_arrow_and_size() -> None:
    import pyarrow as pa

    hs = [_h(str(i).encode()) for i in range(1000)]
    index = SkipIndex.from_arrow(pa.chunked_array([pa.array(hs + [None])]))
    assert len(index) == 1000 and all(index.contains_many(hs))
    assert index.nbytes <= 40 * 1000
