"""Small in-memory datasets for the examples and experiments: Fashion-MNIST, digits, spirals.

Every loader returns [`Split`][] objects (an input tensor and an integer label tensor, both in
memory) so that training loops can index them directly, with no ``DataLoader``:

* [`fashion_mnist`][] reads the IDX files of Zalando's Fashion-MNIST (train 60,000, test
  10,000 images of 28 x 28, ten classes) with numpy, checking magic numbers, dimensions and sizes.
  On Debian/Ubuntu they come with ``apt-get install dataset-fashion-mnist``.
* [`digits`][] is scikit-learn's bundled 8 x 8 digits (1797 images), split deterministically.
* [`spiral`][] / [`spirals`][] draw a noisy two-class spiral in the plane.

[`load`][] dispatches by name, [`take`][] splits off a deterministic subset (the paper's E2
trains on 10,000 Fashion-MNIST images and evaluates on the other 50,000 plus the 10,000 test
images: ``take`` then [`concat`][]), and [`batches`][] iterates minibatches.

Examples:
    >>> train, test = load("spiral", n_train=100, n_test=500, seed=0)
    >>> len(train), tuple(train.x.shape), train.y.unique().tolist()
    (100, (100, 2), [0, 1])
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IdxFormatError",
    "Split",
    "batches",
    "concat",
    "digits",
    "fashion_mnist",
    "load",
    "read_idx",
    "spiral",
    "spirals",
    "take",
]

#: environment variable naming a data folder (searched after an explicit ``root``)
DATA_ENV = "MANIFOLD_LANGEVIN_DATA"
#: where Debian's ``dataset-fashion-mnist`` package installs the IDX files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Fashion-MNIST label names, by label
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX element type codes: numpy dtype (big-endian as stored)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """An IDX file is malformed: wrong magic number, truncated, or not what was expected."""


@dataclass(frozen=True, eq=False)
class Split:
    """A labelled set of examples held in memory.

    Attributes:
        x: inputs, ``(N, ...)`` floating point.
        y: labels, ``(N,)`` int64.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]} labels")
        if self.y.dim() != 1:
            raise ValueError(f"y must be 1-D, got shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def n_classes(self) -> int:
        """``max(y) + 1`` (a host read)."""
        return int(self.y.max()) + 1 if len(self) else 0

    def to(self, device=None, dtype: torch.dtype | None = None) -> Split:
        """The split on ``device`` with inputs of ``dtype`` (labels stay int64).

        Examples:
            >>> s = Split(torch.zeros(3, 2), torch.tensor([0, 1, 0])).to(dtype=torch.float64)
            >>> s.x.dtype, s.y.dtype
            (torch.float64, torch.int64)
        """
        return Split(self.x.to(device=device, dtype=dtype), self.y.to(device=device))

    def subset(self, index: torch.Tensor | slice) -> Split:
        """The examples at ``index`` (a slice, an index tensor or a boolean mask)."""
        return Split(self.x[index], self.y[index])


# ------------------------------------------------------------------------------------- IDX


def _open_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise IdxFormatError(
            f"{path}: the gzip stream is truncated or corrupted ({exc}); re-download or reinstall "
            "the file"
        ) from exc


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, gzip-compressed or plain) into a numpy array.

    Layout: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C``
    int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, one big-endian uint32
    per dimension, then the data in C order.

    Args:
        path: the file (compression is detected from its first bytes, not its name).
        ndim: the number of dimensions the caller expects (checked when given).

    Returns:
        an array of the stored dtype (native byte order) and shape.

    Raises:
        IdxFormatError: bad magic number, unexpected number of dimensions, or a data size that
            does not match the header (truncated or padded file); the message names the file.

    Examples:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(f).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    data = _open_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero0, zero1, code, nd = data[:4]
    if zero0 or zero1 or code not in _IDX_TYPES:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with type TT "
            f"in {sorted(f'{c:02x}' for c in _IDX_TYPES)}); not an IDX file"
        )
    if ndim is not None and nd != ndim:
        raise IdxFormatError(f"{path}: an IDX file of {nd} dimension(s), expected {ndim}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes, expected {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    dtype = _IDX_TYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path}: {what}: the header announces shape {dims} of {dtype.name} "
            f"({expected} data bytes) but the file holds {got}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


# --------------------------------------------------------------------------- Fashion-MNIST


def _candidates(root) -> list[Path]:
    """Folders to search, in order: ``root``, ``$MANIFOLD_LANGEVIN_DATA``, the Debian path.

    Each given folder is tried as is and with a ``fashion-mnist`` subfolder. An explicit ``root``
    is the only place searched (a typo must not silently fall back to another copy).
    """
    bases = [Path(root)] if root is not None else []
    if root is None:
        env = os.environ.get(DATA_ENV)
        if env:
            bases.append(Path(env))
    out = []
    for b in bases:
        out += [b, b / "fashion-mnist"]
    if root is None:
        out.append(FASHION_MNIST_DIR)
    return out


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _locate(root) -> dict[str, tuple[Path, Path]]:
    searched = _candidates(root)
    for folder in searched:
        found = {
            split: (_find_file(folder, img), _find_file(folder, lab))
            for split, (img, lab) in _FASHION_FILES.items()
        }
        if all(p is not None for pair in found.values() for p in pair):
            return found
    names = ", ".join(f"{s}[.gz]" for pair in _FASHION_FILES.values() for s in pair)
    where = "\n  ".join(str(p) for p in searched)
    raise FileNotFoundError(
        f"Fashion-MNIST not found. Looked for {names} in:\n  {where}\n"
        "Install the Debian/Ubuntu package with `apt-get install dataset-fashion-mnist` "
        f"(files under {FASHION_MNIST_DIR}), or put the four IDX files in a folder and pass "
        f"root= or set {DATA_ENV}."
    )


def _read_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` uint8, validated (cached per file)."""
    stats = [(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (images, labels)]
    return _read_pair_cached(*stats)


@functools.lru_cache(maxsize=2)  # the train and test pairs of one copy (about 55 MB)
def _read_pair_cached(images_key: tuple, labels_key: tuple) -> tuple[np.ndarray, np.ndarray]:
    images, labels = Path(images_key[0]), Path(labels_key[0])
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise IdxFormatError(f"{images} / {labels}: expected uint8 data, got {x.dtype} / {y.dtype}")
    if x.shape[1:] != (28, 28):
        raise IdxFormatError(f"{images}: images of {x.shape[1:]}, expected 28 x 28")
    if x.shape[0] != y.shape[0]:
        raise IdxFormatError(f"{images} holds {x.shape[0]} images but {labels} {y.shape[0]} labels")
    if y.size and y.max() > 9:
        raise IdxFormatError(f"{labels}: label {int(y.max())} outside 0..9")
    return x, y  # never handed out: _to_split always copies (uint8 -> float, -> int64)


def _to_split(x: np.ndarray, y: np.ndarray, dtype: torch.dtype, scale: float, shape) -> Split:
    xt = torch.from_numpy(x).to(dtype).div_(scale).reshape(x.shape[0], *shape)
    return Split(xt, torch.from_numpy(y.astype(np.int64)))


def fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    flatten: bool = True,
) -> tuple[Split, Split]:
    """Fashion-MNIST: 60,000 training and 10,000 test images, pixels scaled to ``[0, 1]``.

    Files (``.gz`` or uncompressed): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. Searched in ``root`` when given (only
    there), otherwise in ``$MANIFOLD_LANGEVIN_DATA`` and then ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist``); a folder may also hold them in a ``fashion-mnist``
    subfolder. The parsed files are cached in memory (one dataset).

    Args:
        root: folder holding the four files.
        dtype: floating dtype of the images.
        flatten: ``(N, 784)`` images if true, else ``(N, 1, 28, 28)``.

    Returns:
        ``(train, test)``; labels are int64 in ``0..9`` (see ``FASHION_MNIST_CLASSES``).

    Raises:
        FileNotFoundError: no searched folder holds the four files (the message lists them and
            the apt package).
        IdxFormatError: a file is corrupted, truncated or of the wrong shape.

    Examples:
        >>> train, test = fashion_mnist()  # doctest: +SKIP
        >>> train.x.shape, test.x.shape  # doctest: +SKIP
        (torch.Size([60000, 784]), torch.Size([10000, 784]))
    """
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be floating point, got {dtype}")
    files = _locate(root)
    shape = (784,) if flatten else (1, 28, 28)
    out = []
    for split in ("train", "test"):
        x, y = _read_pair(*files[split])
        out.append(_to_split(x, y, dtype, 255.0, shape))
    return out[0], out[1]


# ---------------------------------------------------------------------------------- digits


def digits(
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    flatten: bool = True,
) -> tuple[Split, Split]:
    """scikit-learn's 8 x 8 digits (1797 images, pixels scaled to ``[0, 1]``), split stratified.

    Each class is shuffled with ``numpy.random.default_rng(seed)`` and its last
    ``round(test_fraction * n_class)`` images go to the test split, so the split depends only on
    ``seed`` and ``test_fraction``. Needs scikit-learn (its bundled copy; no download).

    Args:
        test_fraction: share of every class held out, in ``(0, 1)``.
        seed: seed of the split.
        dtype: floating dtype of the images.
        flatten: ``(N, 64)`` images if true, else ``(N, 1, 8, 8)``.

    Returns:
        ``(train, test)``: 1347 and 450 images with the defaults, in a shuffled order.

    Examples:
        >>> train, test = digits()
        >>> len(train), len(test), tuple(train.x.shape[1:]), float(train.x.max())
        (1347, 450, (64,), 1.0)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a test dependency
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn") from exc
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(test_fraction * len(idx))
        test_idx.append(idx[len(idx) - n_test :])
        train_idx.append(idx[: len(idx) - n_test])
    shape = (64,) if flatten else (1, 8, 8)
    out = []
    for parts in (train_idx, test_idx):
        idx = rng.permutation(np.concatenate(parts))
        out.append(_to_split(x[idx], y[idx], dtype, 16.0, shape))
    return out[0], out[1]


# ---------------------------------------------------------------------------------- spiral


def spiral(
    n: int = 100,
    noise: float = 0.1,
    seed: int | np.random.SeedSequence = 0,
    *,
    turns: float = 1.5,
    dtype: torch.dtype = torch.float32,
) -> Split:
    """Two interleaved spiral arms in the plane, one per class, with Gaussian noise.

    Point ``i`` of class ``k`` lies at radius ``t`` and angle ``2 pi turns t + k pi`` with
    ``t = sqrt(u)``, ``u ~ U(0.02, 1)`` (uniform density along the disc), plus ``noise`` times a
    standard normal in each coordinate. The classes alternate (``y = 0, 1, 0, 1, ...``), so any
    prefix is balanced. Radii and noise come from two numpy streams derived from ``seed``: the
    same arguments give the same points on every platform, and ``spiral(n)`` is the first ``n``
    points of ``spiral(m)`` for ``m > n``.

    Args:
        n: number of points.
        noise: standard deviation of the coordinate noise (the arms are ``1 / (2 turns)`` apart).
        seed: seed of the draw (an int or a ``numpy.random.SeedSequence``).
        turns: number of turns of each arm.
        dtype: floating dtype of the points.

    Returns:
        a split with ``x`` of shape ``(n, 2)`` (mostly within ``[-1, 1]^2``) and ``y`` in {0, 1}.

    Examples:
        >>> s = spiral(6, seed=1)
        >>> tuple(s.x.shape), s.y.tolist()
        ((6, 2), [0, 1, 0, 1, 0, 1])
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    radii, jitter = (np.random.default_rng(s) for s in _children(seed, 2))
    y = np.arange(n) % 2
    t = np.sqrt(radii.uniform(0.02, 1.0, size=n))
    angle = 2.0 * np.pi * turns * t + np.pi * y
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    x = x + noise * jitter.standard_normal((n, 2))
    return Split(torch.from_numpy(x).to(dtype), torch.from_numpy(y.astype(np.int64)))


def spirals(
    n_train: int = 100,
    n_test: int = 10_000,
    noise: float = 0.1,
    seed: int = 0,
    *,
    turns: float = 1.5,
    dtype: torch.dtype = torch.float32,
) -> tuple[Split, Split]:
    """A training and a test set drawn independently from the same [`spiral`][] distribution.

    The two draws use independent streams derived from ``seed``, so the training set does not
    depend on ``n_test`` and vice versa.

    Returns:
        ``(train, test)``.
    """
    s_train, s_test = _children(seed, 2)
    train = spiral(n_train, noise, s_train, turns=turns, dtype=dtype)
    test = spiral(n_test, noise, s_test, turns=turns, dtype=dtype)
    return train, test


def _children(seed: int | np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """``n`` independent seed sequences derived from ``seed`` (without mutating it, unlike
    ``SeedSequence.spawn``, so that the same argument always gives the same streams)."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return [np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i)) for i in range(n)]


# ------------------------------------------------------------------------------- utilities


def take(split: Split, n: int, *, seed: int | None = None) -> tuple[Split, Split]:
    """Split off ``n`` examples: ``(taken, rest)``.

    Args:
        split: the examples.
        n: how many to take, ``0 <= n <= len(split)``.
        seed: ``None`` takes the first ``n`` (in file order); an int takes a random subset drawn
            with ``torch.Generator().manual_seed(seed)`` (both parts keep the original order).

    Returns:
        ``(taken, rest)``. The paper's E2 set-up is ``small, rest = take(train, 10_000)`` with
        ``concat(rest, test)`` as the 60,000-image evaluation set.

    Examples:
        >>> s = Split(torch.arange(5.0)[:, None], torch.arange(5))
        >>> a, b = take(s, 2)
        >>> a.y.tolist(), b.y.tolist()
        ([0, 1], [2, 3, 4])
    """
    if not 0 <= n <= len(split):
        raise ValueError(f"n must be in [0, {len(split)}], got {n}")
    if seed is None:
        return split.subset(slice(0, n)), split.subset(slice(n, None))
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(split), dtype=torch.bool)
    mask[perm[:n]] = True
    mask = mask.to(split.y.device)
    return split.subset(mask), split.subset(~mask)


def concat(*splits: Split) -> Split:
    """The examples of several splits, one after another."""
    if not splits:
        raise ValueError("concat needs at least one split")
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))


def batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches ``(x, y)`` of an in-memory split (one pass).

    The permutation is drawn on the generator's device (CPU by default) and moved to the data's;
    no host synchronisation happens per batch.

    Args:
        split: the examples (already on the training device).
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        generator: random generator of the shuffle (``None``: torch's global one).
        shuffle: draw a random order; otherwise the stored order.
        drop_last: skip a final incomplete batch.

    Examples:
        >>> s = Split(torch.arange(5.0)[:, None], torch.arange(5))
        >>> [y.tolist() for _, y in batches(s, 2, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(split)
    if shuffle:
        dev = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=dev).to(split.y.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            idx = slice(start, min(start + batch_size, n))
        else:
            idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


# ------------------------------------------------------------------------------- dispatch

#: names accepted by [`load`][]
DATASETS = ("fashion-mnist", "digits", "spiral")


def load(name: str, **kwargs) -> tuple[Split, Split]:
    """``(train, test)`` of a dataset by name.

    Args:
        name: ``"fashion-mnist"`` ([`fashion_mnist`][]), ``"digits"`` ([`digits`][]) or
            ``"spiral"`` ([`spirals`][]).
        **kwargs: passed to that loader.

    Examples:
        >>> train, test = load("digits", seed=0)
        >>> len(train) + len(test)
        1797
    """
    loaders = {"fashion-mnist": fashion_mnist, "digits": digits, "spiral": spirals}
    key = name.lower().replace("_", "-")
    if key not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return loaders[key](**kwargs)
