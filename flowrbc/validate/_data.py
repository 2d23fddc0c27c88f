"""Data shared by the validation tasks: offline image sets that ship with scikit-learn, and
readers for the real datasets in their published layouts.

Offline (no download):
- ``load_digits_split``: scikit-learn's handwritten digits (1,797 real 8×8 images, 10 classes).
- ``load_sample_pictures``: scikit-learn's two sample photographs (china.jpg, flower.jpg).

Real layouts (``--data-dir``):
- MNIST idx files (``train-images-idx3-ubyte[.gz]`` …): big-endian header, magic 2051
  (images, 3 dims) and 2049 (labels, 1 dim).
- ModelNet40 HDF5 (``ply_data_train*.h5`` / ``ply_data_test*.h5``): ``data`` (N, 2048, 3)
  float32, ``label`` (N, 1).
- CelebA: ``img_align_celeba/*.jpg`` and ``list_attr_celeba.txt`` (count line, the 40
  attribute names, then ``filename v1 … v40`` with values ±1); optional
  ``list_eval_partition.txt`` (0 train, 1 val, 2 test).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowrbc.errors import FlowrbcError

MNIST_IMAGES_MAGIC = 2051
MNIST_LABELS_MAGIC = 2049


@dataclass
class ImageSplit:
    """Images as float32 in [0, 1] with integer labels, already split."""

    train_x: np.ndarray  # (n_train, H, W) or (n_train, H, W, 3)
    train_y: np.ndarray  # (n_train,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # what was read, for the result table


# --------------------------------------------------------------------------- offline data
def load_digits_split(seed: int = 0, test_fraction: float = 0.3) -> ImageSplit:
    """scikit-learn's digits, split per class (stratified) so every class is in both halves."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8), pixel values 0..16
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return ImageSplit(x[~test], y[~test], x[test], y[test], "scikit-learn digits (8×8, offline)")


def load_sample_pictures() -> list[np.ndarray]:
    """scikit-learn's sample photographs as float32 (H, W, 3) arrays in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(im, dtype=np.float32) / 255.0 for im in load_sample_images().images]


# --------------------------------------------------------------------------- MNIST idx
def read_idx(path: str | Path) -> np.ndarray:
    """Read one MNIST idx file (optionally gzip-compressed) into a uint8 array.

    Header: magic (big-endian int32; 2051 = images with 3 dims, 2049 = labels with 1 dim),
    then one big-endian int32 per dimension, then the unsigned bytes.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            blob = fh.read()
    except (OSError, EOFError) as exc:
        raise FlowrbcError(f"{path}: cannot read MNIST idx file ({exc})") from None
    if len(blob) < 8:
        raise FlowrbcError(f"{path}: not an MNIST idx file (only {len(blob)} bytes)")
    magic = int.from_bytes(blob[:4], "big")
    ndim = {MNIST_IMAGES_MAGIC: 3, MNIST_LABELS_MAGIC: 1}.get(magic)
    if ndim is None:
        raise FlowrbcError(
            f"{path}: not an MNIST idx file (magic {magic}, expected {MNIST_IMAGES_MAGIC} or {MNIST_LABELS_MAGIC})"
        )
    header = 4 + 4 * ndim
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(blob) - header < expected:
        raise FlowrbcError(f"{path}: truncated MNIST idx file ({len(blob) - header} of {expected} data bytes)")
    return np.frombuffer(blob, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _find_one(data_dir: Path, stems: list[str], what: str) -> Path:
    for stem in stems:
        for cand in (data_dir / stem, data_dir / f"{stem}.gz"):
            if cand.is_file():
                return cand
    raise FlowrbcError(f"{data_dir}: no {what} file (looked for {', '.join(stems)} [.gz])")


def load_mnist_dir(data_dir: str | Path) -> ImageSplit:
    """MNIST from the four idx files in ``data_dir`` (names with '-' or '.' before 'idx')."""
    data_dir = Path(data_dir)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _find_one(data_dir, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], f"MNIST {split} images")
        labels = _find_one(data_dir, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], f"MNIST {split} labels")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1:
            raise FlowrbcError(f"{images}: images and labels swapped (image file has {x.ndim} dims)")
        if len(x) != len(y):
            raise FlowrbcError(f"{labels}: {len(y)} labels for {len(x)} images in {images.name}")
        if y.size and y.max() > 9:
            raise FlowrbcError(f"{labels}: label {int(y.max())} is not a digit")
        parts[split] = (x.astype(np.float32) / 255.0, y.astype(np.int64))
    return ImageSplit(*parts["train"], *parts["test"], f"MNIST idx files in {data_dir}")


# --------------------------------------------------------------------------- ModelNet40
@dataclass
class PointClouds:
    train_x: np.ndarray  # (n_train, P, 3) float32
    train_y: np.ndarray  # (n_train,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    n_classes: int
    source: str


def _read_h5_clouds(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    xs, ys = [], []
    for f in files:
        try:
            with h5py.File(f, "r") as h5:
                if "data" not in h5 or "label" not in h5:
                    raise FlowrbcError(f"{f}: expected datasets 'data' and 'label', found {sorted(h5.keys())}")
                x = np.asarray(h5["data"], dtype=np.float32)
                y = np.asarray(h5["label"]).reshape(-1).astype(np.int64)
        except OSError as exc:
            raise FlowrbcError(f"{f}: cannot read HDF5 ({exc})") from None
        if x.ndim != 3 or x.shape[2] != 3:
            raise FlowrbcError(f"{f}: 'data' has shape {x.shape}, expected (N, points, 3)")
        if len(x) != len(y):
            raise FlowrbcError(f"{f}: {len(y)} labels for {len(x)} point clouds")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_modelnet40_dir(data_dir: str | Path) -> PointClouds:
    """ModelNet40 point clouds from ``ply_data_train*.h5`` and ``ply_data_test*.h5``.

    The files may sit in ``data_dir`` or in a ``modelnet40_ply_hdf5_2048`` folder below it.
    """
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir / "modelnet40_ply_hdf5_2048"):
        train = sorted(root.glob("ply_data_train*.h5"))
        test = sorted(root.glob("ply_data_test*.h5"))
        if train and test:
            break
    else:
        raise FlowrbcError(f"{data_dir}: no ModelNet40 HDF5 files (ply_data_train*.h5 and ply_data_test*.h5)")
    tx, ty = _read_h5_clouds(train)
    vx, vy = _read_h5_clouds(test)
    n_classes = int(max(ty.max(), vy.max())) + 1
    return PointClouds(tx, ty, vx, vy, n_classes, f"ModelNet40 HDF5 in {root} ({len(train)}+{len(test)} files)")


# --------------------------------------------------------------------------- CelebA
@dataclass
class CelebA:
    """CelebA attribute table; images are read on demand (the full set is ~200k JPEGs)."""

    image_dir: Path
    filenames: np.ndarray  # (n,) str
    attributes: np.ndarray  # (n, 40) bool
    attribute_names: list[str]
    split: np.ndarray  # (n,) int: 0 train, 1 val, 2 test

    def load(self, index: np.ndarray, size: int) -> np.ndarray:
        """Read and resize images ``index`` to (len, size, size, 3) float32 in [0, 1]."""
        return np.stack([read_image(self.image_dir / self.filenames[i], size) for i in index])


def read_image(path: Path, size: int) -> np.ndarray:
    """One RGB image (JPEG/PNG via matplotlib's Pillow reader) resized to size × size."""
    import matplotlib.image as mpimg

    try:
        img = np.asarray(mpimg.imread(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise FlowrbcError(f"{path}: cannot read image ({exc})") from None
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return resize_area(img[..., :3], size)


def resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, C) to (size, size, C): each output pixel is the mean of its source area
    (at least one source pixel, so enlarging repeats pixels)."""

    def bands(n: int) -> tuple[np.ndarray, np.ndarray]:
        edges = np.floor(np.linspace(0, n, size + 1)).astype(int)
        lo = np.minimum(edges[:-1], n - 1)
        return lo, np.maximum(edges[1:], lo + 1)

    def mean_bands(a: np.ndarray, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        # Cumulative sums make each band's sum one subtraction.
        zero = np.zeros_like(np.take(a, [0], axis=axis))
        c = np.concatenate([zero, np.cumsum(a, axis=axis, dtype=np.float64)], axis=axis)
        shape = [1] * a.ndim
        shape[axis] = size
        return (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / (hi - lo).reshape(shape)

    out = mean_bands(img, 0, *bands(img.shape[0]))
    return mean_bands(out, 1, *bands(img.shape[1])).astype(np.float32)


def load_celeba_dir(data_dir: str | Path) -> CelebA:
    """CelebA's attribute list and image folder; the split from list_eval_partition.txt when
    present, else a stable hash of the file name (70/15/15)."""
    data_dir = Path(data_dir)
    attr_file = data_dir / "list_attr_celeba.txt"
    image_dir = data_dir / "img_align_celeba"
    if not attr_file.is_file():
        raise FlowrbcError(f"{data_dir}: no list_attr_celeba.txt")
    if not image_dir.is_dir():
        raise FlowrbcError(f"{data_dir}: no img_align_celeba folder")
    lines = attr_file.read_text().splitlines()
    if len(lines) < 3:
        raise FlowrbcError(f"{attr_file}: expected a count line, the attribute names and one line per image")
    names = lines[1].split()
    files, rows = [], []
    for no, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise FlowrbcError(f"{attr_file}: line {no} has {len(parts) - 1} values for {len(names)} attributes")
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            raise FlowrbcError(f"{attr_file}: line {no} has a value that is not ±1") from None
        files.append(parts[0])
        rows.append(values)
    attributes = np.asarray(rows, dtype=np.int64) > 0
    filenames = np.asarray(files)
    split = np.empty(len(files), dtype=np.int64)
    part_file = data_dir / "list_eval_partition.txt"
    if part_file.is_file():
        part = dict(line.split()[:2] for line in part_file.read_text().splitlines() if line.strip())
        split[:] = [int(part.get(f, 0)) for f in files]
    else:
        h = np.array([int(hashlib.md5(f.encode()).hexdigest()[:8], 16) % 100 for f in files])
        split[:] = np.where(h < 70, 0, np.where(h < 85, 1, 2))
    return CelebA(image_dir, filenames, attributes, names, split)


def find_data(data_dir: Path | None, sub: str) -> Path | None:
    """``data_dir/sub`` when that folder exists, else ``data_dir`` itself (or None)."""
    if data_dir is None:
        return None
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise FlowrbcError(f"{data_dir}: --data-dir does not exist")
    return data_dir / sub if (data_dir / sub).is_dir() else data_dir
