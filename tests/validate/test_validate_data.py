"""Real-data loaders on tiny files written in the published layouts."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from flowrbc.errors import FlowrbcError
from flowrbc.validate._data import (
    load_celeba_dir,
    load_digits_split,
    load_modelnet40_dir,
    load_mnist_dir,
    read_idx,
    resize_area,
)


def write_idx(path, array: np.ndarray, magic: int, compress: bool = False) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)


def write_mnist(folder, n_train=12, n_test=6, side=28, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, side, side))
        labels = np.arange(n) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, 2051, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 2049, compress)
        data[prefix] = (images, labels)
    return data


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path, compress):
    data = write_mnist(tmp_path, compress=compress)
    split = load_mnist_dir(tmp_path)
    assert split.train_x.shape == (12, 28, 28) and split.test_x.shape == (6, 28, 28)
    np.testing.assert_allclose(split.train_x * 255, data["train"][0], atol=1e-4)
    np.testing.assert_array_equal(split.test_y, data["t10k"][1])
    assert split.train_x.dtype == np.float32 and 0 <= split.train_x.min() and split.train_x.max() <= 1


def test_idx_header_is_big_endian_and_checked(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "x", images, 2051)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), images)
    (tmp_path / "bad").write_bytes((1234).to_bytes(4, "big") + b"\0" * 8)
    with pytest.raises(FlowrbcError, match="magic 1234"):
        read_idx(tmp_path / "bad")
    blob = (tmp_path / "x").read_bytes()
    (tmp_path / "short").write_bytes(blob[:-5])
    with pytest.raises(FlowrbcError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist_dir_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FlowrbcError, match="MNIST test labels"):
        load_mnist_dir(tmp_path)


def write_modelnet(folder, n=(5, 3), points=2048, classes=40, seed=0):
    import h5py

    rng = np.random.default_rng(seed)
    for name, count in (("ply_data_train0.h5", n[0]), ("ply_data_test0.h5", n[1])):
        with h5py.File(folder / name, "w") as f:
            f["data"] = rng.normal(size=(count, points, 3)).astype(np.float32)
            f["label"] = rng.integers(0, classes, size=(count, 1)).astype(np.uint8)


def test_modelnet40_h5_layout(tmp_path):
    import h5py

    write_modelnet(tmp_path)
    clouds = load_modelnet40_dir(tmp_path)
    assert clouds.train_x.shape == (5, 2048, 3) and clouds.test_x.shape == (3, 2048, 3)
    assert clouds.train_y.shape == (5,) and clouds.train_y.dtype == np.int64
    with h5py.File(tmp_path / "ply_data_test0.h5", "a") as f:
        del f["label"]
    with pytest.raises(FlowrbcError, match="'label'"):
        load_modelnet40_dir(tmp_path)


def write_celeba(folder, per_split=(6, 2), side=20):
    """Images 0..k: every attribute +1 ('both' for any pair); the rest all -1 ('neither')."""
    import matplotlib.image as mpimg

    img_dir = folder / "img_align_celeba"
    img_dir.mkdir()
    names = [f"attr_{i}" for i in range(40)]
    lines, parts = [], []
    i = 0
    for split in range(3):
        for k in range(sum(per_split)):
            name = f"{i:06d}.jpg"
            colour = np.zeros((side, side, 3), dtype=np.uint8)
            colour[..., k % 3] = 200
            mpimg.imsave(img_dir / name, colour)
            value = "1" if k < per_split[0] else "-1"
            lines.append(name + " " + " ".join([value] * 40))
            parts.append(f"{name} {split}")
            i += 1
    (folder / "list_attr_celeba.txt").write_text(f"{i}\n" + " ".join(names) + "\n" + "\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return i


def test_celeba_folder_and_jpeg_reading(tmp_path):
    n = write_celeba(tmp_path)
    celeba = load_celeba_dir(tmp_path)
    assert len(celeba.filenames) == n and celeba.attributes.shape == (n, 40)
    assert celeba.attributes[0].all() and not celeba.attributes[6].any()
    assert np.bincount(celeba.split).tolist() == [8, 8, 8]
    images = celeba.load(np.array([0, 1]), size=8)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.float32
    # JPEG is lossy, but a flat colour survives: image 0 is red, image 1 green.
    assert images[0, ..., 0].mean() > 0.6 and images[0, ..., 1].mean() < 0.2
    assert images[1, ..., 1].mean() > 0.6


def test_celeba_bad_attribute_line(tmp_path):
    write_celeba(tmp_path)
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]
    path.write_text("\n".join(lines))
    with pytest.raises(FlowrbcError, match="line 4 has 39 values for 40"):
        load_celeba_dir(tmp_path)


def test_resize_area_averages_blocks_and_repeats_when_enlarging():
    a = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    np.testing.assert_allclose(resize_area(a, 2)[..., 0], [[2.5, 4.5], [10.5, 12.5]])
    big = resize_area(a, 8)[..., 0]
    np.testing.assert_allclose(big[::2, ::2], a[..., 0])


def test_digits_split_is_stratified_and_disjoint():
    split = load_digits_split(seed=0)
    assert split.train_x.shape[1:] == (8, 8) and split.train_x.max() <= 1
    assert set(np.unique(split.test_y)) == set(range(10))
    assert len(split.train_y) + len(split.test_y) == 1797
