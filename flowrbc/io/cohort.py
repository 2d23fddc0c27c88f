r"""Cohorts: all cells of many samples as one matrix plus a sample index, stored as .h5ad.

In memory, a ``Cohort`` is ``X`` float32 ``(n_cells, C)``, cells contiguous per sample, and
``offsets`` int64 ``(n_samples + 1,)`` (sample i owns ``X[offsets[i]:offsets[i+1]]``), with
the sample table (targets, sex, age, split, n_cells, QC) indexed by sample_id.

On disk it is an AnnData file (``anndata.read_h5ad`` opens it): ``X``; ``obs["sample_id"]``
categorical; ``var`` indexed by channel with a ``role`` column; ``uns["samples"]`` the sample
table; ``uns["offsets"]``. The file is written with h5py following anndata's on-disk spec
(encoding-type / encoding-version attributes) so that 10^8 cells never become 10^8 Python
strings: the obs index is stored as fixed-width ASCII (zero-padded cell numbers), and the
categorical codes and index are written in blocks, compressed. ``read_cohort`` reads ``X``,
``offsets`` and the sample table directly (no obs scan).

The element encodings themselves are in ``flowrbc.io._h5ad``; the built-in synthetic cohort
and its cache in ``flowrbc.io.builtin``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from flowrbc.errors import CohortError
from flowrbc.io._h5ad import (
    read_elem,
    set_encoding,
    write_array,
    write_dataframe,
    write_dict_group,
    write_scalar_string,
    write_strings,
)

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

FORMAT_VERSION = 2  # of the flowrbc cohort layout inside the .h5ad (2: bound_* sample columns)
SPLITS = ("train", "val", "test")
_BLOCK = 1 << 22  # rows per write block (bounded temporaries at any cohort size)


@dataclass
class Cohort:
    X: np.ndarray  # (n_cells, C) float32
    offsets: np.ndarray  # (n_samples + 1,) int64
    samples: "pd.DataFrame"  # noqa: F821  index = sample_id
    channels: list[str]
    roles: dict[str, str] = field(default_factory=dict)  # role -> channel name
    source: str = ""

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        _check(self)

    @property
    def n_samples(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_cells(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample_cells(self, i: int) -> np.ndarray:
        """Cells of sample ``i`` (a view), (n_i, C)."""
        return self.X[self.offsets[i] : self.offsets[i + 1]]

    def role_columns(self, roles: Sequence[str] = ("volume", "hemoglobin")) -> list[int]:
        """Column indices of ``roles`` in ``X``; CohortError naming a missing role."""
        missing = [r for r in roles if self.roles.get(r) not in self.channels]
        if missing:
            raise CohortError(f"cohort ({self.source or 'in memory'}) has no channel for {', '.join(missing)}")
        return [self.channels.index(self.roles[r]) for r in roles]

    def to_anndata(self):
        """An AnnData of cells: obs["sample_id"] categorical, var["role"], uns["samples"]."""
        import anndata
        import pandas as pd

        codes = np.repeat(np.arange(self.n_samples, dtype=np.int32), self.n_cells)
        obs = pd.DataFrame(
            {"sample_id": pd.Categorical.from_codes(codes, categories=self.samples.index.astype(str))},
            index=pd.RangeIndex(len(self.X)).astype(str),
        )
        role_of = {ch: r for r, ch in self.roles.items()}
        var = pd.DataFrame({"role": [role_of.get(c, "") for c in self.channels]}, index=list(self.channels))
        uns = {"samples": self.samples.copy(), "offsets": self.offsets.copy(), "source": self.source}
        return anndata.AnnData(X=self.X, obs=obs, var=var, uns=uns)

    @classmethod
    def from_anndata(cls, adata, *, source: str = "") -> "Cohort":
        """A cohort from an AnnData of cells with ``obs["sample_id"]``; cells need not be
        contiguous (they are sorted stably by sample). The sample order is that of
        ``uns["samples"]`` when present, else the categories' order."""
        import pandas as pd

        if "sample_id" not in adata.obs.columns:
            raise CohortError(f"{source or 'AnnData'}: obs has no 'sample_id' column (one per cell)")
        sid = adata.obs["sample_id"]
        if sid.isna().any():
            raise CohortError(f"{source or 'AnnData'}: {int(sid.isna().sum())} cells have no sample_id")
        table = adata.uns.get("samples")
        if isinstance(table, pd.DataFrame):
            table = table.copy()
            table.index = table.index.astype(str)
            present = set(sid.astype(str).unique())
            order = [s for s in table.index if s in present]
            extra = sorted(present - set(order))
            if extra:
                raise CohortError(f"{source or 'AnnData'}: sample(s) {extra[:3]} have cells but no row in uns['samples']")
        else:
            cat = sid.astype("category")
            order = [str(c) for c in cat.cat.categories if (sid == c).any()]
            table = pd.DataFrame(index=pd.Index(order, name="sample_id"))
        perm, counts = sample_order(sid, order)
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        samples = table.loc[order].copy()
        samples.index.name = "sample_id"
        samples["n_cells"] = counts.astype(np.int64)
        channels = [str(c) for c in adata.var_names]
        roles = _roles_from_var(adata.var, channels)
        src = source or str(adata.uns.get("source", ""))
        return cls(
            X=np.ascontiguousarray(x[perm], dtype=np.float32),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            samples=samples,
            channels=channels,
            roles=roles,
            source=src,
        )


def sample_order(sample_ids, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cells labelled ``sample_ids`` (obs order) grouped by sample in ``order``, stably ->
    (perm (n_cells,): the obs row of each grouped cell, counts (len(order),)). The one rule
    ``Cohort.from_anndata`` groups by and ``flowrbc explain`` maps cohort values back to obs with."""
    import pandas as pd

    codes = pd.Categorical(np.asarray(sample_ids).astype(str), categories=list(order)).codes.astype(np.int64)
    return np.argsort(codes, kind="stable"), np.bincount(codes, minlength=len(order))


def _roles_from_var(var, channels: list[str]) -> dict[str, str]:
    if "role" in var.columns:
        roles = {str(r): ch for r, ch in zip(var["role"], channels) if isinstance(r, str) and r}
        if roles:
            return roles
    from flowrbc.errors import ChannelError
    from flowrbc.io.channels import resolve_channels

    labels = [None if not isinstance(x, str) else x for x in var["marker"]] if "marker" in var.columns else None
    try:
        found = resolve_channels(channels, labels)
    except ChannelError:
        return {}
    return {r: channels[i] for r, i in found.items()}


def _check(c: Cohort) -> None:
    where = c.source or "cohort"
    if c.X.ndim != 2 or c.X.shape[1] != len(c.channels):
        raise CohortError(f"{where}: X has shape {c.X.shape} for {len(c.channels)} channels")
    o = c.offsets
    if o.ndim != 1 or len(o) < 1 or o[0] != 0 or o[-1] != len(c.X) or np.any(np.diff(o) < 0):
        raise CohortError(f"{where}: offsets must rise from 0 to n_cells={len(c.X)}")
    if len(c.samples) != len(o) - 1:
        raise CohortError(f"{where}: {len(c.samples)} sample rows for {len(o) - 1} offsets intervals")
    if not c.samples.index.is_unique:
        dup = c.samples.index[c.samples.index.duplicated()][:3].tolist()
        raise CohortError(f"{where}: duplicate sample ids {dup}")
    if "split" in c.samples.columns:
        bad = set(c.samples["split"].dropna().astype(str)) - set(SPLITS)
        if bad:
            raise CohortError(f"{where}: unknown split value(s) {sorted(bad)}; use train, val, test")


# --------------------------------------------------------------------------- splits


def assign_splits(n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """A random train/val/test assignment of ``n`` samples with exact counts (deterministic).

    val and test get ``round(n * f)`` samples (at least one each when ``n >= 3`` and the
    fraction is positive); train gets the rest.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    counts = [int(round(n * f)) for f in fractions[1:]]
    if n >= 3:
        counts = [max(k, 1) if f > 0 else 0 for k, f in zip(counts, fractions[1:])]
    n_val, n_test = counts
    labels = np.array(["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test, dtype=object)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5917,)))
    return labels[rng.permutation(n)]


# --------------------------------------------------------------------------- QC columns


def add_qc_columns(samples, X: np.ndarray, offsets: np.ndarray) -> None:
    """Add per-sample QC to ``samples`` in place: the indices of the stored cells
    (qc_mcv, qc_mch, qc_rdw, qc_hdw, qc_chdw) and the flags (flag_too_few_cells, ...).
    Event counts (n_events, n_gated, n_nonfinite) already in ``samples`` (from the raw
    events, before gating) are kept; missing ones are taken from the stored cells."""
    from flowrbc import pp

    qc = pp.qc_by_sample(X, offsets)
    for k in ("n_events", "n_gated", "n_nonfinite"):
        if k not in samples.columns:
            samples[k] = qc[k]
    n_events = samples["n_events"].to_numpy()
    samples["frac_gated"] = samples["n_gated"].to_numpy() / np.maximum(n_events, 1)
    for k in ("mcv", "mch", "rdw", "hdw", "chdw"):
        samples[f"qc_{k}"] = qc[k]
    flags = pp.qc_flags({k: samples[k].to_numpy() for k in ("n_events", "n_gated", "n_nonfinite")})
    for k, v in flags.items():
        samples[f"flag_{k}"] = v


# --------------------------------------------------------------------------- h5ad writing


def _cell_names(lo: int, hi: int, width: int) -> np.ndarray:
    """Zero-padded decimal cell numbers lo..hi-1 as fixed-width bytes (no Python strings)."""
    i = np.arange(lo, hi, dtype=np.int64)
    digits = (i[:, None] // (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))) % 10  # (n, w)
    return (digits + ord("0")).astype(np.uint8).view(f"S{width}").reshape(-1)


def write_cohort(cohort: Cohort, path) -> Path:
    """Write ``cohort`` as .h5ad (temp file in the same folder, then rename)."""
    import h5py

    from flowrbc.pp import row_owners

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n, C = cohort.X.shape
    try:
        with h5py.File(tmp, "w") as f:
            set_encoding(f, "anndata", "0.1.0")
            rows = max(1, min(n, 1 << 18))
            write_array(f, "X", cohort.X, chunks=(rows, C) if n else None)

            obs = f.create_group("obs")
            set_encoding(obs, "dataframe")
            obs.attrs["_index"] = "_index"
            obs.attrs["column-order"] = np.array(["sample_id"], dtype=object)
            width = max(1, len(str(max(n - 1, 0))))
            comp = dict(compression="gzip", compression_opts=1, shuffle=True)
            idx = obs.create_dataset("_index", shape=(n,), dtype=f"S{width}", chunks=(rows,) if n else None,
                                     **(comp if n else {}))
            set_encoding(idx, "string-array")
            sg = obs.create_group("sample_id")
            set_encoding(sg, "categorical")
            sg.attrs["ordered"] = False
            write_strings(sg, "categories", cohort.samples.index.astype(str))
            code_dtype = np.int8 if cohort.n_samples < 2**7 else np.int16 if cohort.n_samples < 2**15 else np.int32
            codes = sg.create_dataset("codes", shape=(n,), dtype=code_dtype, chunks=(rows,) if n else None,
                                      **(comp if n else {}))
            set_encoding(codes, "array")
            for lo in range(0, n, _BLOCK):
                hi = min(n, lo + _BLOCK)
                idx[lo:hi] = _cell_names(lo, hi, width)
                codes[lo:hi] = row_owners(cohort.offsets, lo, hi).astype(code_dtype)

            var = f.create_group("var")
            set_encoding(var, "dataframe")
            var.attrs["_index"] = "_index"
            var.attrs["column-order"] = np.array(["role"], dtype=object)
            write_strings(var, "_index", cohort.channels)
            role_of = {ch: r for r, ch in cohort.roles.items()}
            write_strings(var, "role", [role_of.get(c, "") for c in cohort.channels])

            uns = write_dict_group(f, "uns")
            write_dataframe(uns, "samples", cohort.samples)
            write_array(uns, "offsets", cohort.offsets)
            write_scalar_string(uns, "source", cohort.source)
            fv = uns.create_dataset("flowrbc_cohort_format", data=np.int64(FORMAT_VERSION))
            set_encoding(fv, "numeric-scalar")
            bound = cohort.samples.attrs.get("bound")
            if bound:
                og = write_dict_group(uns, "bound")
                for k, v in bound.items():
                    set_encoding(og.create_dataset(k, data=np.float64(v)), "numeric-scalar")
            for name in ("layers", "obsm", "obsp", "varm", "varp"):
                write_dict_group(f, name)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- h5ad reading


def open_hdf5(path: Path, kind: str = "HDF5"):
    """``h5py.File(path, "r")``, with a one-line CohortError for a missing or non-HDF5 file."""
    import h5py

    if not path.exists():
        raise CohortError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CohortError(f"{path}: not an {kind} file ({exc})") from None


def read_cohort(path) -> Cohort:
    """Read a cohort .h5ad: the fast h5py path for files from ``write_cohort``; other .h5ad
    files (cells with ``obs["sample_id"]``) go through anndata and ``Cohort.from_anndata``."""
    import h5py

    path = Path(path)
    with open_hdf5(path, "HDF5/.h5ad") as f:
        if "uns" not in f or "offsets" not in f["uns"] or "samples" not in f["uns"]:
            fast = False
        else:
            fast = True
            try:
                Xd = f["X"]
                if not isinstance(Xd, h5py.Dataset):
                    raise CohortError(f"{path}: X is sparse; cohorts store dense cells")
                X = np.empty(Xd.shape, dtype=np.float32)
                if X.size:
                    Xd.read_direct(X)
                offsets = f["uns/offsets"][()].astype(np.int64)
                samples = read_elem(f["uns/samples"])
                samples.index = samples.index.astype(str)
                samples.index.name = "sample_id"
                channels = [str(c) for c in read_elem(f["var/_index"])]
                roles_col = read_elem(f["var/role"]) if "role" in f["var"] else [""] * len(channels)
                roles = {str(r): ch for r, ch in zip(roles_col, channels) if isinstance(r, str) and r}
                source = read_elem(f["uns/source"]) if "source" in f["uns"] else str(path)
                if "bound" in f["uns"]:
                    samples.attrs["bound"] = read_elem(f["uns/bound"])
            except KeyError as exc:
                raise CohortError(f"{path}: malformed cohort file ({exc})") from None
    if not fast:
        import anndata

        try:
            adata = anndata.read_h5ad(path)
        except Exception as exc:  # anndata raises many kinds on foreign files
            raise CohortError(f"{path}: cannot read as AnnData ({exc})") from None
        return Cohort.from_anndata(adata, source=str(path))
    cohort = Cohort(X=X, offsets=offsets, samples=samples, channels=channels, roles=roles, source=source or str(path))
    return cohort
