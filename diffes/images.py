"""Image grids for samples; used by ``diffes generate``, the demo and the report."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from diffes.io import atomic_path, check_file_path

__all__ = ["make_grid", "save_grid"]


def make_grid(images: torch.Tensor, rows: int, scale: int = 4, pad: int = 1) -> Image.Image:
    """Tile (N, C, H, W) images in [0, 1] into ``rows`` rows, each pixel ``scale`` x ``scale``."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    canvas = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top : top + h, left : left + w] = images[i].clamp(0, 1).cpu()
    array = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def save_grid(
    images: torch.Tensor, path: str | os.PathLike[str], rows: int, scale: int = 6, field: str = "output"
) -> Path:
    """A PNG grid at ``path``; a path that is a folder, or under a file, is a ConfigError naming ``field``."""
    path = check_file_path(field, path)
    with atomic_path(path) as tmp:
        make_grid(images, rows, scale).save(tmp, format="PNG")
    return path
