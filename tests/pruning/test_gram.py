"""Packed Grams (blocked upper triangles): sums equal x^T x, unpack is exactly symmetric, sizes are checked."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffes.pruning import gram


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2 * gram.BLOCK + 3), batches=st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_packed_sums_equal_the_full_product(n: int, batches: list[int]) -> None:
    g = torch.Generator().manual_seed(n)
    packed, full = gram.zeros(n), torch.zeros(n, n, dtype=torch.float64)
    for m in batches:
        x = torch.randn(m, n, generator=g, dtype=torch.float64)
        gram.add_rows_(packed, x)
        full += x.T @ x
    unpacked = gram.unpack(packed, n)
    assert torch.equal(unpacked, unpacked.T)
    torch.testing.assert_close(unpacked, full, rtol=1e-12, atol=1e-12)
    assert torch.equal(gram.diagonal(packed, n), unpacked.diagonal())
    # a triangle plus at most one block-row's overhang per row; never more than the full square
    assert packed.numel() <= min(n * n, n * (n + 1) // 2 + n * (gram.BLOCK - 1))


def test_a_packed_gram_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="a packed 300 x 300 Gram has"):
        gram.unpack(gram.zeros(299), 300)
