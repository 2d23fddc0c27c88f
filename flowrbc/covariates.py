"""Per-sample covariates (sex, age): what every clinical request carries besides the cells.

The cells do not reveal a patient's sex, yet the RBC count (and with it the hematocrit) and
the WHO anemia threshold differ by sex. A model that sees only cells must average over it.

Encoding (the model's input; 0 always means "unknown"):

* ``sex``: +1 male, −1 female, 0 unknown
* any numeric covariate (``age``): z = (v − mean) / std with the training statistics,
  0 when unknown (the training mean)

The moment baseline gets the same values with NaN for unknown (gradient-boosted trees route
missing values themselves). numpy only: the predict path uses this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from flowrbc.errors import FlowrbcError

DEFAULT = ("sex", "age")
# FCS TEXT keywords looked up (upper case, in order) for a covariate's value.
KEYWORDS = {"sex": ("FLOWRBC_SEX", "SEX", "PATIENT_SEX", "GENDER"),
            "age": ("FLOWRBC_AGE", "AGE", "PATIENT_AGE")}


def parse_sex(value: Any) -> float:
    """'M'/'male'/'m' -> +1, 'F'/'female'/'w'/'woman' -> −1, anything else (None, '', 'U') -> 0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0.0
    s = str(value).strip().upper()
    if s in ("M", "MALE", "MAN"):
        return 1.0
    if s in ("F", "FEMALE", "W", "WOMAN"):
        return -1.0
    return 0.0


def parse_number(value: Any) -> float:
    """A finite float, else NaN (unknown)."""
    try:
        v = float(str(value).strip()) if value is not None else math.nan
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


@dataclass
class CovariateEncoder:
    """Covariate names and, for numeric ones, the training mean and std."""

    names: list[str]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, samples, names: Sequence[str], train_idx: np.ndarray) -> "CovariateEncoder":
        """Statistics of the numeric covariates over the training rows of ``samples``."""
        mean, std = {}, {}
        for name in names:
            if name not in samples.columns:
                raise FlowrbcError(f"--covariate {name}: the cohort's sample table has no {name!r} column")
            if name == "sex":
                continue
            v = _numeric_column(samples, name)[train_idx]
            v = v[np.isfinite(v)]
            if len(v) == 0:
                raise FlowrbcError(f"--covariate {name}: no training sample has a value")
            sd = float(v.std())
            mean[name], std[name] = float(v.mean()), sd if sd > 0 else 1.0
        return cls(list(names), mean, std)

    def raw(self, samples, missing_unknown: bool = False) -> np.ndarray:
        """(n_samples, k) float64: sex ±1, numbers as given; NaN where unknown.
        ``missing_unknown``: a column the table lacks is unknown for every sample."""
        cols = []
        for name in self.names:
            if name not in samples.columns and missing_unknown:
                cols.append(np.full(len(samples), np.nan))
            elif name == "sex":
                s = np.array([parse_sex(v) for v in samples[name].tolist()])
                cols.append(np.where(s == 0, np.nan, s))
            else:
                cols.append(_numeric_column(samples, name))
        return np.stack(cols, axis=1) if cols else np.zeros((len(samples), 0))

    def encode_raw(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` (n, k) with NaN for unknown -> model input (n, k) float32, 0 for unknown."""
        z = np.array(raw, dtype=np.float64, copy=True)
        z = z.reshape(len(z), len(self.names)) if z.ndim == 2 else z.reshape(-1, len(self.names))  # (n, k)
        for j, name in enumerate(self.names):
            if name != "sex":
                z[:, j] = (z[:, j] - self.mean[name]) / self.std[name]
        return np.where(np.isfinite(z), z, 0.0).astype(np.float32)

    def encode(self, samples) -> np.ndarray:
        """Model input (n_samples, k) for a sample table."""
        return self.encode_raw(self.raw(samples))

    def values(self, given: Mapping[str, Any] | None = None, keywords: Mapping[str, str] | None = None
               ) -> tuple[dict[str, Any], np.ndarray]:
        """One request's covariates: ``given`` (e.g. --sex/--age) first, then FCS keywords.

        -> (the values used, None where unknown; raw (k,) with NaN for unknown)."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        kw = {str(k).upper(): v for k, v in (keywords or {}).items()}
        used: dict[str, Any] = {}
        raw = np.full(len(self.names), np.nan)
        for j, name in enumerate(self.names):
            value = given.get(name)
            if value is None:
                value = next((kw[k] for k in KEYWORDS.get(name, (f"FLOWRBC_{name.upper()}", name.upper()))
                              if k in kw and str(kw[k]).strip()), None)
            if name == "sex":
                s = parse_sex(value)
                raw[j] = s if s else np.nan
                used[name] = {1.0: "M", -1.0: "F"}.get(s)
            else:
                v = parse_number(value)
                raw[j] = v
                used[name] = v if math.isfinite(v) else None
        return used, raw

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "CovariateEncoder":
        d = d or {}
        return cls([str(n) for n in d.get("names", [])], {k: float(v) for k, v in d.get("mean", {}).items()},
                   {k: float(v) for k, v in d.get("std", {}).items()})


def resolve_names(samples, requested: Sequence[str] | None) -> list[str]:
    """``None``: the default covariates the sample table has; else exactly ``requested``."""
    if requested is None:
        return [n for n in DEFAULT if n in samples.columns]
    return list(requested)


def _numeric_column(samples, name: str) -> np.ndarray:
    col = samples[name]
    try:
        return np.asarray(col.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    except (TypeError, ValueError):
        raise FlowrbcError(f"--covariate {name}: column {name!r} is not numeric (only 'sex' may be text)") from None
