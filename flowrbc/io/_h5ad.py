"""anndata's on-disk element encoding, written and read with h5py.

Each HDF5 group or dataset carries ``encoding-type`` / ``encoding-version`` attributes saying
what it holds (array, string-array, categorical, dataframe, dict, ...), so that
``anndata.read_h5ad`` opens what ``flowrbc.io.cohort.write_cohort`` writes. These helpers cover
the encodings the cohort layout uses; ``read_elem`` hands any other to anndata itself.
"""

from __future__ import annotations

import numpy as np


def set_encoding(obj, kind: str, version: str = "0.2.0") -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = version


def write_array(g, name: str, data: np.ndarray, **kw):
    d = g.create_dataset(name, data=data, **kw)
    set_encoding(d, "array")
    return d


def write_strings(g, name: str, values) -> None:
    import h5py

    arr = np.array([str(v) for v in values], dtype=object)
    d = g.create_dataset(name, data=arr, dtype=h5py.string_dtype())
    set_encoding(d, "string-array")


def _write_categorical(g, name: str, codes: np.ndarray, categories, ordered: bool = False) -> None:
    cg = g.create_group(name)
    set_encoding(cg, "categorical")
    cg.attrs["ordered"] = bool(ordered)
    write_strings(cg, "categories", categories)
    write_array(cg, "codes", codes)


def _write_column(g, name: str, col) -> None:
    import pandas as pd

    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        _write_categorical(g, name, col.cat.codes.to_numpy(), col.cat.categories.astype(str), dtype.ordered)
    elif isinstance(dtype, pd.BooleanDtype) or isinstance(dtype, pd.core.dtypes.dtypes.BaseMaskedDtype):
        kind = "nullable-boolean" if isinstance(dtype, pd.BooleanDtype) else "nullable-integer"
        ng = g.create_group(name)
        set_encoding(ng, kind, "0.1.0")
        write_array(ng, "values", col.to_numpy(dtype=dtype.numpy_dtype, na_value=0))
        write_array(ng, "mask", col.isna().to_numpy())
    elif dtype.kind in "biuf":
        write_array(g, name, col.to_numpy())
    else:  # strings (object or pandas string dtype)
        if col.isna().any():
            cat = pd.Categorical(col.astype(object).where(col.notna(), None))
            _write_categorical(g, name, cat.codes, cat.categories.astype(str))
        else:
            write_strings(g, name, col.astype(str))


def write_dataframe(g, name: str, df) -> None:
    dg = g.create_group(name)
    set_encoding(dg, "dataframe")
    index_name = df.index.name or "_index"
    if index_name in df.columns:
        index_name = "_index"
    dg.attrs["_index"] = index_name
    dg.attrs["column-order"] = np.array([str(c) for c in df.columns], dtype=object)
    write_strings(dg, index_name, df.index.astype(str))
    for c in df.columns:
        _write_column(dg, str(c), df[c])


def write_dict_group(g, name: str):
    sub = g.create_group(name)
    set_encoding(sub, "dict", "0.1.0")
    return sub


def write_scalar_string(g, name: str, value: str) -> None:
    import h5py

    d = g.create_dataset(name, data=value, dtype=h5py.string_dtype())
    set_encoding(d, "string")


def read_elem(obj):
    """Decode the anndata encodings the sample table uses (others via anndata itself)."""
    import pandas as pd

    kind = obj.attrs.get("encoding-type", "array")
    if kind == "array":
        return obj[()]
    if kind == "string-array":
        return obj.asstr()[()].astype(object)
    if kind == "categorical":
        cats = read_elem(obj["categories"])
        return pd.Categorical.from_codes(obj["codes"][()], categories=cats, ordered=bool(obj.attrs.get("ordered", False)))
    if kind in ("nullable-integer", "nullable-boolean"):
        values, mask = obj["values"][()], obj["mask"][()]
        cls = pd.arrays.BooleanArray if kind == "nullable-boolean" else pd.arrays.IntegerArray
        return cls(values, mask)
    if kind == "string":
        return obj.asstr()[()]
    if kind == "numeric-scalar":
        return obj[()].item()
    if kind == "dataframe":
        index_key = obj.attrs["_index"]
        index = pd.Index(read_elem(obj[index_key]), name=None if index_key == "_index" else index_key)
        cols = [str(c) for c in obj.attrs.get("column-order", [])]
        return pd.DataFrame({c: read_elem(obj[c]) for c in cols}, index=index)
    if kind == "dict":
        return {k: read_elem(v) for k, v in obj.items()}
    from anndata.io import read_elem as anndata_read_elem

    return anndata_read_elem(obj)
