"""Feature extraction: images/s of the one-time ResNet50 pass and its GFLOP/s against the matmul limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import ensure_features


def resnet50_flops_per_image(backbone) -> float:
    """Multiply-add FLOPs (2 per MAC) of every convolution of the backbone for one image; the rest is <1%."""
    import keras

    total = 0.0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            _, h, w, cout = layer.output.shape
            total += 2.0 * kh * kw * cin * cout * h * w
    return total


def measure(cache_dir: Path, subset: int, matmul: float, flops_per_image: float | None) -> dict[str, Any]:
    """Build the cache entry of ``subset`` images in an empty ``cache_dir`` and time it."""
    cached = ensure_features(cache_dir, subset)
    t = cached.extraction
    if t is None:
        raise RuntimeError(f"{cache_dir} already held the features: extraction was not measured")
    ips = t["steady_images"] / t["steady_s"]
    out = {"n_images": cached.n, "wall_s": t["wall_s"], "images_per_s": ips,
           "steady": t["steady_images"] < cached.n,  # False: one chunk only, the rate includes start-up
           "peak_memory_mb": t["peak_memory_mb"], "key": cached.key}
    if flops_per_image:
        out.update(gflops=ips * flops_per_image / 1e9, share_of_matmul=ips * flops_per_image / 1e9 / matmul)
    return out
