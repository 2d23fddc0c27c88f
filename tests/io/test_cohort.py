"""Cohorts on disk: round trips, anndata compatibility, from_anndata, splits, default cohort."""

import warnings

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest

from flowrbc.errors import CohortError
from flowrbc.io.builtin import default_cohort_path, load_default_cohort, synthetic_cohort
from flowrbc.io.cohort import Cohort, assign_splits, read_cohort, write_cohort


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(40, 150, seed=1)


def test_synthetic_cohort_layout(cohort):
    s = cohort.samples
    assert cohort.n_samples == 40 and cohort.X.dtype == np.float32
    assert s.index.name == "sample_id" and s.index.is_unique
    np.testing.assert_array_equal(np.diff(cohort.offsets), s["n_cells"])
    assert set(s["split"]) == {"train", "val", "test"}
    assert cohort.roles == {"volume": "RBC Volume", "hemoglobin": "RBC Hb"}
    for col in ("hematocrit", "hemoglobin", "anemia", "sex", "age", "condition", "qc_mcv", "flag_too_few_cells"):
        assert col in s.columns
    # QC measured on the cells agrees with the generator's patient-level MCV
    np.testing.assert_allclose(s["qc_mcv"], s["mcv"], rtol=0.05)
    assert cohort.role_columns() == [0, 1]


def test_synthetic_cohort_is_deterministic(cohort):
    again = synthetic_cohort(40, 150, seed=1)
    np.testing.assert_array_equal(again.X, cohort.X)
    pd.testing.assert_frame_equal(again.samples, cohort.samples)


def test_write_read_round_trip(cohort, tmp_path):
    path = write_cohort(cohort, tmp_path / "c.h5ad")
    back = read_cohort(path)
    np.testing.assert_array_equal(back.X, cohort.X)
    np.testing.assert_array_equal(back.offsets, cohort.offsets)
    pd.testing.assert_frame_equal(back.samples, cohort.samples)
    assert back.channels == cohort.channels and back.roles == cohort.roles and back.source == cohort.source
    assert back.samples.attrs["bound"] == pytest.approx(cohort.samples.attrs["bound"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_anndata_reads_the_file(cohort, tmp_path):
    path = write_cohort(cohort, tmp_path / "c.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "transforming index" or similar on read
        a = anndata.read_h5ad(path)
    assert a.shape == cohort.X.shape
    assert a.obs_names.is_unique
    assert isinstance(a.obs["sample_id"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(a.X, cohort.X)
    i = 7
    lo, hi = cohort.offsets[i], cohort.offsets[i + 1]
    assert (a.obs["sample_id"].iloc[lo:hi] == cohort.samples.index[i]).all()
    assert list(a.var["role"]) == ["volume", "hemoglobin"]
    pd.testing.assert_frame_equal(a.uns["samples"].rename_axis("sample_id"), cohort.samples, check_dtype=False)
    # and an anndata-written copy reads back as the same cohort
    a.write_h5ad(tmp_path / "copy.h5ad")
    again = read_cohort(tmp_path / "copy.h5ad")
    np.testing.assert_array_equal(again.X, cohort.X)
    np.testing.assert_array_equal(again.offsets, cohort.offsets)


def test_from_anndata_with_shuffled_cells(cohort):
    a = cohort.to_anndata()
    perm = np.random.default_rng(0).permutation(a.n_obs)
    shuffled = a[perm].copy()
    back = Cohort.from_anndata(shuffled)
    np.testing.assert_array_equal(back.offsets, cohort.offsets)
    assert list(back.samples.index) == list(cohort.samples.index)
    for i in (0, 13, 39):
        a_cells = np.sort(back.sample_cells(i), axis=0)
        np.testing.assert_array_equal(a_cells, np.sort(cohort.sample_cells(i), axis=0))
    # cells of a sample keep their relative order (stable sort)
    sub = shuffled.X[shuffled.obs["sample_id"].to_numpy() == cohort.samples.index[5]]
    np.testing.assert_array_equal(back.sample_cells(5), sub)


def test_from_anndata_without_sample_table():
    X = np.array([[90, 30], [80, 27], [95, 31], [70, 20.0]], dtype=np.float32)
    obs = pd.DataFrame({"sample_id": ["b", "a", "b", "a"]}, index=list("0123"))
    a = anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["Volume", "Hb"]))
    c = Cohort.from_anndata(a)
    assert list(c.samples.index) == ["a", "b"]
    np.testing.assert_array_equal(c.X, X[[1, 3, 0, 2]])
    assert c.roles == {"volume": "Volume", "hemoglobin": "Hb"}
    with pytest.raises(CohortError, match="sample_id"):
        Cohort.from_anndata(anndata.AnnData(X=X))


def test_bad_cohorts_and_files(tmp_path, cohort):
    with pytest.raises(CohortError, match="offsets"):
        Cohort(X=cohort.X, offsets=cohort.offsets + 1, samples=cohort.samples, channels=cohort.channels)
    with pytest.raises(CohortError, match="split"):
        s = cohort.samples.copy()
        s["split"] = "training"
        Cohort(X=cohort.X, offsets=cohort.offsets, samples=s, channels=cohort.channels)
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    with pytest.raises(CohortError, match="bad.h5ad"):
        read_cohort(bad)
    with pytest.raises(CohortError, match="no such file"):
        read_cohort(tmp_path / "missing.h5ad")


def test_assign_splits():
    s = assign_splits(100, seed=3)
    assert (s == "train").sum() == 70 and (s == "val").sum() == 15 and (s == "test").sum() == 15
    np.testing.assert_array_equal(s, assign_splits(100, seed=3))
    assert not np.array_equal(s, assign_splits(100, seed=4))
    tiny = assign_splits(3, seed=0)
    assert sorted(tiny) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(10, fractions=(0.5, 0.5, 0.5))


def test_default_cohort_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWRBC_CACHE", str(tmp_path))
    path = default_cohort_path(12, 60, 0)
    assert path.parent == tmp_path
    first = load_default_cohort(12, 60, 0)
    assert path.exists()
    with h5py.File(path, "r+") as f:  # a cached file is what the second call reads
        f["X"][0, 0] = -1.0
    second = load_default_cohort(12, 60, 0)
    assert second.X[0, 0] == -1.0 and first.X[0, 0] != -1.0
    path.write_bytes(b"corrupt")  # an unreadable cache is regenerated
    third = load_default_cohort(12, 60, 0)
    np.testing.assert_array_equal(third.X, first.X)


def test_io_package_exports_the_public_readers():
    import flowrbc.io as io
    from flowrbc.io.cohort import read_cohort, write_cohort
    from flowrbc.io.fcs import read_fcs, write_fcs

    assert (io.read_fcs, io.write_fcs, io.read_cohort, io.write_cohort) == (
        read_fcs, write_fcs, read_cohort, write_cohort,
    )
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        io.nonsense
