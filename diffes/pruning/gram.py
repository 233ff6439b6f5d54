"""Symmetric float64 Gram matrices kept as blocked upper triangles: the layout of every Gram a library sums,
spills, saves and solves from.

Rows [r, r + BLOCK) of the upper triangle are kept from column r on, as one contiguous rectangle; the
rectangles follow each other in one flat tensor. Summing a batch of rows is then one in-place matrix product
per rectangle, with no full n x n product and no index tensors (an index per entry of a packed triangle costs
twice the triangle's own memory); the layout takes the memory of a float32 full matrix plus one block-row, and
keeps float64's headroom (a float16 model's inputs squared and summed over a trajectory never overflow).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["BLOCK", "packed_numel", "zeros", "add_rows_", "unpack", "diagonal"]

BLOCK = 256  # a block-row's height: the storage overhead over a triangle is about BLOCK / n


def _rects(n: int) -> Iterator[tuple[int, int, int]]:
    """(first row, last row + 1, offset) of each block-row of an n x n matrix."""
    offset = 0
    for r in range(0, n, BLOCK):
        end = min(r + BLOCK, n)
        yield r, end, offset
        offset += (end - r) * (n - r)


def packed_numel(n: int) -> int:
    """Entries an n x n Gram takes in this layout."""
    return sum((end - r) * (n - r) for r, end, _ in _rects(n))


def zeros(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(packed_numel(n), dtype=torch.float64, device=device)


def _views(packed: torch.Tensor, n: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    if packed.numel() != packed_numel(n):
        raise ValueError(f"a packed {n} x {n} Gram has {packed_numel(n)} entries, not {packed.numel()}")
    for r, end, offset in _rects(n):
        yield r, end, packed[offset : offset + (end - r) * (n - r)].view(end - r, n - r)


def add_rows_(packed: torch.Tensor, rows: torch.Tensor) -> None:
    """``packed += rows^T rows`` (rows: (m, n) float64, on the packed tensor's device)."""
    n = rows.shape[1]
    for r, end, view in _views(packed, n):
        view.addmm_(rows[:, r:end].T, rows[:, r:])


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The full symmetric n x n float64 matrix (exactly symmetric: each entry mirrors the upper triangle)."""
    full = torch.empty(n, n, dtype=torch.float64, device=packed.device)
    for r, end, view in _views(packed, n):
        square = view[:, : end - r]
        full[r:end, r:end] = square.triu() + square.triu(1).T
        full[r:end, end:] = view[:, end - r :]
        full[end:, r:end] = view[:, end - r :].T
    return full


def diagonal(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([view.diagonal() for _, _, view in _views(packed, n)])
