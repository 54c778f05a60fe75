"""saecli.plan stays torch-free: the Ray driver plans batches without loading a model."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from saecli.plan import CHUNK_BATCHES, SampleTokens, chunk_plan, forwarded_positions, planned_order


def test_plan_imports_no_torch():
    code = "import sys, saecli.plan; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_planned_order_and_chunks_of_whole_batches():
    toks = [SampleTokens([1, 2], [1, 2] + [3] * (i % 5 + 1), [1, 2] + [4] * (i % 3 + 1)) for i in range(23)]
    order = planned_order(toks, 4)
    assert sorted(order) == list(range(23))
    chunks = chunk_plan(order, 4, workers=2)
    assert [i for chunk in chunks for i in chunk] == order
    assert all(len(chunk) % 4 == 0 and len(chunk) <= 4 * CHUNK_BATCHES for chunk in chunks[:-1])
    assert forwarded_positions(toks[:3]) == 2 * 3 * max(t.length for t in toks[:3])  # under 8 samples: one full pass


@given(
    st.lists(
        st.tuples(*[st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6)] * 3, st.integers(-1, 4), st.integers(-1, 4)),
        max_size=8,
    ),
    st.integers(0, 8),
    st.integers(0, 8),
)
def test_packed_tokens_unpack_to_the_same_tokens(texts, start, stop):
    from saecli.plan import PackedTokens

    toks = [SampleTokens(p, f, h, fs, hs) for p, f, h, fs, hs in texts]
    packed = PackedTokens.concat([PackedTokens.pack(toks[:3]), PackedTokens.pack(toks[3:])])
    assert packed.unpack() == toks and len(packed) == len(toks)
    assert packed.unpack(start, stop) == toks[start:stop]
