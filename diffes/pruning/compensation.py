"""Least-squares refit of the layer that consumes pruned channels (the OBS-style update).

With calibration inputs X of the consumer and H = E[[x, 1][x, 1]^T], the kept columns S are refit so
that W' [x_S, 1] matches W [x, 1] in mean square:  W' = W H[:, S] (H[S, S] + lambda I)^-1.
The bias column takes up the mean contribution of the removed channels.
"""

from __future__ import annotations

import torch

from diffes.pruning.gram import unpack

__all__ = ["compensate", "kept_columns"]


def kept_columns(kept_channels: torch.Tensor, per_channel: int) -> torch.Tensor:
    """Gram columns of kept input channels: a conv channel owns kh*kw consecutive columns."""
    offsets = torch.arange(per_channel)
    return (kept_channels[:, None] * per_channel + offsets[None, :]).reshape(-1)


def compensate(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gram: torch.Tensor,
    kept_channels: torch.Tensor,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New (weight, bias) of a consumer that only sees ``kept_channels`` of its input; ``gram`` is its packed
    float64 Gram (``gram.py``), bias column last."""
    out_features = weight.shape[0]
    flat = weight.detach().reshape(out_features, -1).double().cpu()
    n = flat.shape[1]
    cols = kept_columns(kept_channels.cpu(), n // weight.shape[1])
    if bias is not None:
        full = torch.cat([flat, bias.detach().double().cpu()[:, None]], 1)
        idx = torch.cat([cols, torch.tensor([n])])
    else:
        full, idx = flat, cols
    # one n x n matrix at a time: the Gram, then its kept rows (H symmetric: H[S, :] W^T = (W H[:, S])^T)
    h_rows = unpack(gram.cpu(), n + 1)[idx, : full.shape[1]]
    h_ss, rhs_t = h_rows[:, idx], h_rows @ full.T
    del h_rows
    k = len(cols)
    lam = damp * h_ss.diagonal()[:k].mean().clamp_min(1e-12)
    h_ss.diagonal()[:k].add_(lam)
    factor, info = torch.linalg.cholesky_ex(h_ss)
    # the damped Gram is positive definite; Cholesky halves LU's work and falls back to it only if rounding
    # says otherwise
    solved = (torch.cholesky_solve(rhs_t, factor) if int(info) == 0 else torch.linalg.solve(h_ss, rhs_t)).T
    new_weight = solved[:, :k].reshape(out_features, len(kept_channels), *weight.shape[2:])
    new_bias = solved[:, k] if bias is not None else None
    dtype, device = weight.dtype, weight.device
    return new_weight.to(device, dtype), (new_bias.to(device, dtype) if new_bias is not None else None)
