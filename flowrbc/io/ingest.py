"""Build a cohort from a folder of FCS files and a clinical table (``flowrbc ingest``).

Each file is read, its volume and hemoglobin channels resolved, matched to a clinical row by
the table's ``file`` column or by its sample id, rescaled when asked (given factors, or
factors derived from the clinical MCV and MCH), checked and gated, by ``flowrbc.io.sample``
as ``flowrbc predict`` reads a file; a bad file is reported and skipped (or stops the ingest
with ``strict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from flowrbc.errors import CohortError
from flowrbc.io.channels import ROLES
from flowrbc.io.cohort import Cohort, add_qc_columns, assign_splits
from flowrbc.io.sample import FCS_SUFFIXES, gate_sample, read_sample
from flowrbc.io.units import CLINICAL, clinical_scales

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class IngestResult:
    cohort: Cohort
    skipped: list[tuple[str, str]]  # (file, reason)
    unmatched_rows: list[str]  # clinical sample ids with no FCS file
    scales: dict[str, dict] = field(default_factory=dict)  # role -> summary of the factors applied


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def read_clinical(path) -> "pd.DataFrame":  # noqa: F821
    """The clinical table (CSV): one row per sample with ``sample_id`` and/or ``file``;
    optional hematocrit (%), hemoglobin (g/dL), anemia, sex (M/F), age, condition, split.
    ``anemia`` missing but hemoglobin and sex present: derived by the WHO rule."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"sample_id": str, "file": str})
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CohortError(f"{path}: cannot read the clinical table ({exc})") from None
    if "sample_id" not in df.columns and "file" not in df.columns:
        raise CohortError(f"{path}: needs a 'sample_id' or 'file' column (has {', '.join(map(str, df.columns))})")
    if "sample_id" not in df.columns:
        df["sample_id"] = [Path(str(p)).stem for p in df["file"]]
    if df["sample_id"].isna().any():
        raise CohortError(f"{path}: {int(df['sample_id'].isna().sum())} rows without sample_id")
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise CohortError(f"{path}: duplicate sample_id {dup.iloc[0]!r}")
    if "sex" in df.columns:
        s = df["sex"].astype(str).str.strip().str.upper().str[:1]
        df["sex"] = s.where(s.isin(["M", "F"]), None)
    if "anemia" in df.columns:
        a = df["anemia"].astype(str).str.strip().str.lower()
        bad = ~(a.isin(_TRUE | _FALSE) | df["anemia"].isna())
        if bad.any():
            raise CohortError(f"{path}: anemia value {df['anemia'][bad].iloc[0]!r} is not true/false/1/0")
        vals = np.where(a.isin(_TRUE), 1.0, np.where(a.isin(_FALSE), 0.0, np.nan))
        df["anemia"] = vals.astype(bool) if not np.isnan(vals).any() else vals
    elif "hemoglobin" in df.columns and "sex" in df.columns:
        thr = df["sex"].map({"M": 13.0, "F": 12.0})
        vals = np.where(thr.isna() | df["hemoglobin"].isna(), np.nan, (df["hemoglobin"] < thr).astype(float))
        df["anemia"] = vals.astype(bool) if not np.isnan(vals).any() else vals
    for col in ("hematocrit", "hemoglobin", "age"):
        if col in df.columns and df[col].dtype.kind not in "biuf":
            raise CohortError(f"{path}: column {col!r} is not numeric")
    return df


def _sample_id_of(keywords: dict, path: Path) -> str:
    for key in ("FLOWRBC_SAMPLE_ID", "$SMNO"):
        v = keywords.get(key)
        if v and v.strip():
            return v.strip()
    return path.stem


def ingest_fcs(
    directory,
    clinical,
    *,
    channels: dict[str, str] | None = None,
    strict: bool = False,
    seed: int = 0,
    on_file: Callable[[Path, str | None], None] | None = None,
    scales: dict[str, float] | None = None,
    scale_from_clinical: bool = False,
    dataset: int = 0,
) -> IngestResult:
    """Build a cohort from a folder of FCS files and a clinical table.

    Each ``*.fcs`` is read, its volume and hemoglobin channels resolved (``channels``
    overrides, role -> name), gated (``io.sample``) and matched to a clinical row by the
    ``file`` column (base name) or else by sample id (keyword FLOWRBC_SAMPLE_ID or $SMNO,
    else the file stem). A file that cannot be used is skipped with its reason
    (``strict``: the first such file raises). Splits come from a ``split`` column, else
    ``assign_splits(n, seed)``. ``on_file(path, problem_or_None)`` reports progress.
    ``dataset`` picks the data set of files holding several (0 = the first).

    Channels in instrument units: ``scales`` (role -> factor) multiply every file's channel;
    ``scale_from_clinical`` derives each file's factors from the table's ``mcv`` (volume)
    and ``mch`` (hemoglobin) columns (``units.clinical_scales``). The factors applied are
    stored per sample (``scale_volume``, ``scale_hemoglobin``) and summarised in
    ``IngestResult.scales``; a file still outside the units the gate knows is skipped by name.
    """
    from flowrbc.errors import FlowrbcError

    directory = Path(directory)
    if not directory.is_dir():
        raise CohortError(f"{directory}: not a directory")
    table = read_clinical(clinical)
    derived = _derived_roles(table, clinical, scales) if scale_from_clinical else []
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in FCS_SUFFIXES)
    if not files:
        raise CohortError(f"{directory}: no .fcs files")
    by_file = {Path(str(f)).name: i for i, f in enumerate(table["file"])} if "file" in table.columns else {}
    by_id = {str(s): i for i, s in enumerate(table["sample_id"])}

    parts: list[np.ndarray] = []
    rows: list[int] = []
    used_files: list[str] = []
    qcs: list[dict[str, int]] = []
    applied: list[dict[str, float]] = []
    names: list[str] | None = None
    skipped: list[tuple[str, str]] = []
    for path in files:
        problem = None
        try:
            raw = read_sample(path, overrides=channels, dataset=dataset)  # events (n_events, 2) in ROLES order
            row = by_file.get(path.name)
            if row is None:
                sid = _sample_id_of(raw.keywords, path)
                row = by_id.get(sid)
                if row is None:
                    raise CohortError(f"{path}: no row in the clinical table (file {path.name!r}, sample id {sid!r})")
            if row in rows:
                raise CohortError(f"{path}: clinical row {table['sample_id'].iloc[row]!r} already matched by another file")
            sample = gate_sample(raw, scales=_file_scales(raw.events, table, row, derived, scales))
        except (FlowrbcError, OSError) as exc:
            problem = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            if strict:
                raise CohortError(problem) from None
            skipped.append((str(path), problem))
        else:
            names = names or sample.channels
            parts.append(np.ascontiguousarray(sample.cells, dtype=np.float32))
            rows.append(row)
            used_files.append(path.name)
            qcs.append(sample.qc)
            applied.append(sample.scales)
        if on_file is not None:
            on_file(path, problem)
    if not parts:
        raise CohortError(f"{directory}: no usable FCS file ({len(skipped)} skipped)")

    samples = table.iloc[rows].copy()
    samples["file"] = used_files
    samples = samples.set_index("sample_id")
    samples.index = samples.index.astype(str)
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    samples["n_cells"] = counts
    scaled_roles = [r for r in ROLES if any(r in f for f in applied)]
    for role in scaled_roles:
        samples[f"scale_{role}"] = [f.get(role, 1.0) for f in applied]
    for k in ("n_events", "n_gated", "n_nonfinite"):  # counted on the file's events, before the gate
        samples[k] = np.array([qc[k] for qc in qcs], dtype=np.int64)
    X = np.concatenate(parts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    add_qc_columns(samples, X, offsets)
    if "split" in samples.columns and samples["split"].notna().all():
        samples["split"] = samples["split"].astype(str).str.strip().str.lower()
    else:
        samples["split"] = assign_splits(len(samples), seed)
    used = set(rows)
    unmatched = [str(s) for i, s in enumerate(table["sample_id"]) if i not in used]
    cohort = Cohort(X=X, offsets=offsets, samples=samples, channels=names,
                    roles={"volume": names[0], "hemoglobin": names[1]}, source=str(directory))
    summary = {role: _spread(samples[f"scale_{role}"].to_numpy(), "clinical " + CLINICAL[role]
                             if role in derived else "given") for role in scaled_roles}
    return IngestResult(cohort=cohort, skipped=skipped, unmatched_rows=unmatched, scales=summary)


def _derived_roles(table, clinical, scales: dict[str, float] | None) -> list[str]:
    """Roles whose factors the clinical table can give (its mcv / mch columns)."""
    roles = [r for r, col in CLINICAL.items() if col in table.columns]
    if not roles:
        raise CohortError(f"{clinical}: deriving scales needs an 'mcv' and/or 'mch' column "
                          f"(has {', '.join(map(str, table.columns))})")
    for r in roles:
        if table[CLINICAL[r]].dtype.kind not in "biuf":
            raise CohortError(f"{clinical}: column {CLINICAL[r]!r} is not numeric")
    both = [r for r in roles if r in (scales or {})]
    if both:
        raise CohortError(f"--scale {both[0]} given and the clinical {CLINICAL[both[0]]} would derive it: choose one")
    return roles


def _file_scales(x: np.ndarray, table, row: int, derived: list[str],
                 scales: dict[str, float] | None) -> dict[str, float]:
    """This file's factors: the given ``scales`` and, for ``derived`` roles, the factors
    that bring its gated cells' means to the clinical MCV / MCH of its row."""
    if not derived:
        return dict(scales or {})
    means = {r: float(table[CLINICAL[r]].iloc[row]) for r in derived}
    return clinical_scales(x, ROLES, means, fixed=scales)


def _spread(factors: np.ndarray, source: str) -> dict:
    """How much one role's factors vary across files: mean, CV (%), min, max."""
    mean = float(factors.mean())
    return {"source": source, "mean": mean, "cv_percent": float(100 * factors.std() / mean) if mean else 0.0,
            "min": float(factors.min()), "max": float(factors.max()), "files": int(len(factors))}

