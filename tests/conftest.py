"""Shared test set-up: the --slow switch, ``requires(...)`` for components CI installs, tiny datasets in the
real on-disk formats, one feature cache for the whole session, and command-line runners.

- ``requires("postgres" | "browser" | "fashion" | "paper" | "setpriv")`` returns the component (a URL, a
  path, True) or, when it is missing, skips the test with the reason, except under ``CI=true``, where a
  missing component FAILS the test: CI installs every one of them, so a skip there would hide a broken set-up.
  ``@needs_real_fashion`` (and any ``@pytest.mark.requires(name)``) does the same before a test runs.
- ``Tiny(tmp)``: a 250-image synthetic Fashion-MNIST, a config of fast trials over it, and the CLI; its
  feature cache is a copy of one built once per session by the real extraction (``shared_cache``).
- ``python -m tests.stand_in_cli``: ``search.run`` whose trial processes run ``tests.stand_ins:fast_trial``
  (a process that sleeps instead of training): ``Tiny.stand_in(...)``.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
PAPER_TXT = ROOT.parent / "shared" / "paper.txt"
STAND_IN_CLI = "tests.stand_in_cli"


# ---------------------------------------------------------------- --slow

def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- components: skip locally, fail in CI

def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _postgres() -> tuple[Any, str]:
    url = os.environ.get("SEARCH_TEST_POSTGRES")
    return url, "SEARCH_TEST_POSTGRES is not set: start a server with `bash .ci/postgres.sh` (as root)"


def _browser() -> tuple[Any, str]:
    from tests import browser

    why = browser.browser_missing()
    return why is None, why or ""


def _fashion() -> tuple[Any, str]:
    ok = all((REAL_FASHION / f).is_file() for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
    return REAL_FASHION if ok else None, f"real Fashion-MNIST missing in {REAL_FASHION}: apt-get install dataset-fashion-mnist"


def _paper() -> tuple[Any, str]:
    return PAPER_TXT if PAPER_TXT.is_file() else None, f"{PAPER_TXT} not present (it sits beside the repository)"


def _setpriv() -> tuple[Any, str]:
    # As root, file modes do not stop reads or writes; tests of "unreadable" and "read-only" drop the
    # capabilities that bypass them (util-linux setpriv).
    if os.geteuid() != 0:
        return True, ""
    return shutil.which("setpriv"), "running as root without setpriv (util-linux): file modes cannot be tested"


COMPONENTS: dict[str, Callable[[], tuple[Any, str]]] = {
    "postgres": _postgres, "browser": _browser, "fashion": _fashion, "paper": _paper, "setpriv": _setpriv,
}


def requires(component: str) -> Any:
    """The component (URL, path or True); missing: skip with the reason, or under CI=true fail."""
    value, why = COMPONENTS[component]()
    if value:
        return value
    if in_ci():
        pytest.fail(f"CI=true, but {component} is missing: {why}", pytrace=False)
    pytest.skip(why)


def pytest_runtest_setup(item):
    for mark in item.iter_markers("requires"):
        for component in mark.args:
            requires(component)


needs_real_fashion = pytest.mark.requires("fashion")


def as_user_without_overrides() -> list[str]:
    """Command prefix that makes file modes apply (root bypasses them): drop CAP_DAC_OVERRIDE/READ_SEARCH."""
    if os.geteuid() != 0:
        return []
    requires("setpriv")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


# ---------------------------------------------------------------- tiny datasets in the real formats

def _images(labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Noisy images whose bright band depends on the class, so a head can learn them."""
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


# A user's own data: 3 classes of distinct patterns (a head on random-weight ResNet50 features separates them).
USER_CLASSES = ("checks", "horizontal", "vertical")


def pattern_images(n_per_class: int, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 images and labels: checks, horizontal stripes, vertical stripes, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    bases = [((xx // 4) + (yy // 4)) % 2, (yy // 3) % 2, (xx // 3) % 2]
    labels = np.repeat(np.arange(len(bases)), n_per_class)
    images = np.stack([bases[c] * 190 + rng.integers(0, 50, (size, size)) for c in labels]).astype(np.uint8)
    return images, labels


def write_image_folder(d: Path, n_per_class: int = 30, seed: int = 0) -> Path:
    """Keras' image-folder layout of ``pattern_images``: PNGs in grayscale, RGB and RGBA, a few 20x20 among 28x28."""
    from PIL import Image

    images, labels = pattern_images(n_per_class, seed=seed)
    for i, (img, c) in enumerate(zip(images, labels)):
        folder = d / USER_CLASSES[c]
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img).convert(("L", "RGB", "RGBA")[i % 3])
        (im.resize((20, 20)) if i % 7 == 0 else im).save(folder / f"{i:04d}.png")
    return d


def write_npz(path: Path, n_per_class: int = 30, seed: int = 0, **arrays: Any) -> Path:
    """``pattern_images`` as an .npz (x, y, class_names); ``arrays`` replace or add arrays (None: leave it out)."""
    images, labels = pattern_images(n_per_class, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": images, "y": labels, "class_names": np.array(USER_CLASSES), **arrays}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


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


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (root only); under CI=true a machine that cannot mount one fails the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        why = f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(disk: Path) -> None:
    """Write to ``disk`` until it is full."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass



# ---------------------------------------------------------------- one feature cache per session

@contextlib.contextmanager
def without_keras_backend() -> Iterator[None]:
    """As ``search.run`` runs under ``cli_env()``: without this shell's $KERAS_BACKEND."""
    saved = os.environ.pop("KERAS_BACKEND", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["KERAS_BACKEND"] = saved


def tiny_search(data_dir: Path, cache_dir: Path, weights: str = "random") -> Any:
    """The API's Search of the tiny config over ``data_dir``, with its data read (so its cache key known)."""
    import search

    config_file = Path(tempfile.mkdtemp(prefix="search-tests-config-")) / "tiny.toml"
    config_file.write_text(TINY_CONFIG.format(n_trials=1))
    atexit.register(shutil.rmtree, config_file.parent, True)
    with without_keras_backend():
        s = search.Search(search.load_config(config_file), storage=f"sqlite:///{config_file.parent / 'unused.db'}",
                          weights=weights, data_dir=data_dir, cache_dir=cache_dir)
        s.load_data()
    return s


_SHARED: dict[str, Any] = {}


def shared_cache() -> tuple[Path, str]:
    """(cache_dir, key) of the real features (random-init ResNet50) of ``write_fashion_dir``'s default data.

    Extracted once per session, by the API's ``prepare`` (what ``search.run`` runs); every ``Tiny`` gets a copy.
    """
    if "dir" not in _SHARED:
        root = Path(tempfile.mkdtemp(prefix="search-tests-cache-"))
        atexit.register(shutil.rmtree, root, True)
        s = tiny_search(write_fashion_dir(root / "fmnist"), root / "cache")
        with without_keras_backend():
            s.prepare()
        _SHARED.update(dir=root / "cache", key=s.cache_key)
    return _SHARED["dir"], _SHARED["key"]


def copy_shared_cache(dest: Path) -> Path:
    """A private copy of the session's cache entry in ``dest``; returns the entry."""
    src, key = shared_cache()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / key, dest / key)
    return dest / key


# ---------------------------------------------------------------- command lines

def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: the service's defaults (no $KERAS_BACKEND of this shell), offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "SEARCH_STORAGE")}
    return {**env, "PYTHONPATH": str(ROOT), "SEARCH_OFFLINE": "1",
            "SEARCH_CONFIGS_DIR": str(ROOT / "study_configs"), **extra}


def run_cli(*args: str, timeout: float = 600, cwd: Path | None = None, module: str = "search.run",
            env: dict[str, str] | None = None, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", module, *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None,
             every: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {(err or out or '')[-3000:]}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def tiny(tmp_path):
    """A tiny synthetic Fashion-MNIST, its feature cache, a config of fast trials over it, and the CLI."""
    return Tiny(tmp_path)


class Tiny:
    def __init__(self, tmp: Path, cache: bool = True):
        self.tmp = tmp
        self.data_dir = write_fashion_dir(tmp / "fmnist")
        self.cache_dir = tmp / "cache"
        if cache:
            self.entry = copy_shared_cache(self.cache_dir)
        self.db = tmp / "study.db"
        self.storage = f"sqlite:///{self.db}"

    def config(self, n_trials: int = 3, name: str = "tiny", text: str | None = None, **replace: str) -> Path:
        """Write a config (TINY_CONFIG unless ``text``); ``replace``: old text -> new text, applied in order."""
        path = self.tmp / f"{name}.toml"
        body = text if text is not None else TINY_CONFIG.format(n_trials=n_trials)
        for old, new in replace.items():
            assert old in body, old
            body = body.replace(old, new)
        path.write_text(body)
        return path

    def args(self, config: Path, *extra: str) -> list[str]:
        return ["--study", str(config), "--storage", self.storage, "--data-dir", str(self.data_dir),
                "--cache-dir", str(self.cache_dir), *extra]

    def run(self, *args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``search.run`` with the real trial."""
        return run_cli(*args, timeout=timeout, cwd=cwd or self.tmp)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=self.tmp, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # -- the stand-in trial (tests/stand_ins.py)
    def stand_in_env(self, seconds: float = 0.2, **extra: str) -> dict[str, str]:
        return cli_env(STAND_IN_S=str(seconds), STAND_IN_LOG=str(self.tmp / "stand_in.log"), **extra)

    def stand_in(self, *args: str, seconds: float = 0.2, timeout: float = 600, env: dict[str, str] | None = None,
                 prefix: list[str] = ()) -> subprocess.CompletedProcess:
        """``search.run`` with stand-in trials: the real CLI, optimize loop and storage; trials that sleep."""
        return run_cli(*args, timeout=timeout, cwd=self.tmp, module=STAND_IN_CLI,
                       env=env or self.stand_in_env(seconds), prefix=prefix)

    def stand_in_popen(self, *args: str, seconds: float = 0.2, env: dict[str, str] | None = None,
                       merge: bool = False) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", STAND_IN_CLI, *args], cwd=self.tmp,
                                env=env or self.stand_in_env(seconds), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge else subprocess.PIPE, text=True)

    def stand_in_runs(self) -> list[dict[str, Any]]:
        """Every stand-in trial process started so far: {"pid", "params", "seed"} in start order."""
        import json

        log = self.tmp / "stand_in.log"
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def stop(proc: subprocess.Popen) -> None:
    """End a process this test started (and reap it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()


@pytest.fixture
def restore_signals():
    """For tests that run a command's main() in this process: it installs its own SIGINT/SIGTERM handlers."""
    from search import signals

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    signals.install()  # forget a pending signal
    for s, h in old.items():
        signal.signal(s, h)


@pytest.fixture
def main_here(tmp_path, monkeypatch, capsys, restore_signals):
    """Run a command's ``main(argv)`` in this process, in an empty working directory, as the CLI would.

    Returns (exit code, stderr).  For bad input, which must fail before anything is read or created.
    """
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for k, v in cli_env().items():  # PYTHONPATH too: trial processes import stand-ins from tests/
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)

    def call(main: Callable[[list[str]], int], *argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse
            code = e.code
        return code, capsys.readouterr().err

    call.work = work  # type: ignore[attr-defined]
    return call


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> tuple[str, subprocess.CompletedProcess, Path]:
    """The real ``smoke`` study (2,000 real Fashion-MNIST images, 3 real trials), run once per session.

    Returns (storage URL, the completed command, its directory).  Shared by the end-to-end and browser tests.
    """
    requires("fashion")
    tmp = tmp_path_factory.mktemp("smoke")
    storage = f"sqlite:///{tmp / 'smoke.db'}"
    r = run_cli("--study", "smoke", "--storage", storage, "--cache-dir", str(tmp / "cache"), cwd=tmp, timeout=1500)
    return storage, r, tmp


def trial_artifacts(trial: Any, storage: Any) -> list[dict[str, Any]]:
    """The artifact metadata (artifact_id, filename, mimetype) Optuna stored on a trial."""
    import dataclasses

    import optuna

    return [dataclasses.asdict(m) for m in optuna.artifacts.get_all_artifact_meta(trial, storage=storage)]
