"""Shared fixtures: tiny datasets in the real on-disk formats, a CLI runner, the --slow switch."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


needs_real_fashion = pytest.mark.skipif(
    not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="real Fashion-MNIST missing: apt-get install dataset-fashion-mnist")


def _images(labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Noisy images whose mean brightness pattern depends on the class, so a head can learn them."""
    n = len(labels)
    base = rng.integers(0, 60, size=(n, *shape))
    rows = shape[0]
    for c in range(10):
        idx = labels == c
        band = slice((c * rows) // 10, (c * rows) // 10 + max(2, rows // 8))
        base[idx, band] += 150
    return np.clip(base, 0, 255).astype(np.uint8)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_fashion_dir(d: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """Fashion-MNIST's four IDX .gz files with tiny synthetic content."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", _images(labels, (28, 28), rng))
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return d


def write_cifar_dir(d: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """The cifar-10-batches-py layout (five data batches and a test batch) with tiny content."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = (np.arange(per_batch) % 10).tolist()
        img = _images(np.array(labels), (32, 32, 3), rng)  # (N, 32, 32, 3)
        data = img.transpose(0, 3, 1, 2).reshape(per_batch, -1)  # CIFAR stores channel-major rows
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    return d


TINY_CONFIG = """
[dataset]
name = "fashion_mnist"

[backbone]
weights = "random"

[head]
units = 32

[training]
epochs = 1
batch_size = 32
evaluation = "test"

[search_space]
dropout = {{ type = "float", low = 0.1, high = 0.7 }}
l2 = {{ type = "categorical", choices = [0.0, 1e-4] }}

[[objectives]]
metric = "accuracy"
direction = "maximize"

[[objectives]]
metric = "roc_auc"
direction = "maximize"

[[objectives]]
metric = "train_time_s"
direction = "minimize"

[[objectives]]
metric = "peak_memory_mb"
direction = "minimize"

[sampler]
name = "random"
seed = 0

[run]
n_trials = {n_trials}
"""


@pytest.fixture
def tiny(tmp_path):
    """A tiny synthetic Fashion-MNIST, a config of fast trials over it, and a CLI runner."""
    return Tiny(tmp_path)


class Tiny:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.data_dir = write_fashion_dir(tmp / "fmnist")
        self.cache_dir = tmp / "cache"
        self.db = tmp / "study.db"
        self.storage = f"sqlite:///{self.db}"

    def config(self, n_trials: int = 3, name: str = "tiny", text: str | None = None) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(text if text is not None else TINY_CONFIG.format(n_trials=n_trials))
        return path

    def args(self, config: Path, *extra: str) -> list[str]:
        return ["--study", str(config), "--storage", self.storage, "--data-dir", str(self.data_dir),
                "--cache-dir", str(self.cache_dir), *extra]

    def run(self, *args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, timeout=timeout, cwd=cwd or self.tmp)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=self.tmp, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the service's defaults, not this shell's
    return {**env, "PYTHONPATH": str(ROOT), "SEARCH_OFFLINE": "1", "SEARCH_CONFIGS_DIR": str(ROOT / "study_configs")}


def run_cli(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
