r"""What the generator drew for each patient, kept as arrays so nothing has to be re-derived.

A patient's red cells form a mixture of four log-normal components (``k``): 0 mature own
cells, 1 reticulocytes, 2 an abnormal subpopulation (hypochromic microcytes in iron
deficiency, fragments in megaloblastic anemia, spherocytes in hemolysis), 3 donor cells
(transfusion). Within a component, cell volume ``V`` (fL) and cell hemoglobin concentration
``CHC`` (g/dL) are independent log-normals; hemoglobin content is ``H = V * CHC / 100`` (pg),
so ``(log V, log H)`` is bivariate normal with correlation ``sigma_V / sqrt(sigma_V^2 + sigma_C^2)``.

:class:`Population` is the part infinitely many cells reveal; :class:`PatientRecord` adds the
latents they do not (condition, severity, the RBC count). The bound reads a record, so it
works from the very values the cells were drawn from, and may read only what it documents
as revealed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

COMPONENTS = ("mature", "reticulocytes", "abnormal", "donor")


def mixture_indices(w, M, C, cv, cc) -> dict[str, np.ndarray]:
    """Exact red-cell indices of a mixture of log-normal components (arrays (n, K) -> (n,)).

    ``V_k ~ logN`` with mean ``M_k``, CV ``cv_k``; ``CHC_k ~ logN`` with mean ``C_k``, CV
    ``cc_k``, independent; ``H = V CHC / 100``. For a log-normal with mean ``m`` and CV ``c``,
    ``E[X^2] = m^2 (1 + c^2)``, so ``E[V^2] = sum_k w_k M_k^2 (1+cv_k^2)`` and
    ``E[H^2] = sum_k w_k M_k^2 C_k^2 (1+cv_k^2)(1+cc_k^2) / 10^4``. The indices are those a
    counter reports from infinitely many cells: ``mcv = E[V]`` (fL), ``mch = E[H]`` (pg),
    ``mchc = 100 mch / mcv`` (g/dL), ``rdw = 100 SD(V) / E[V]`` (%), ``hdw = SD(CHC)`` (g/dL),
    ``chdw = SD(H)`` (pg).
    """
    ev = (w * M).sum(1)
    ev2 = (w * M**2 * (1 + cv**2)).sum(1)
    eh = (w * M * C).sum(1) / 100
    eh2 = (w * (M * C) ** 2 * (1 + cv**2) * (1 + cc**2)).sum(1) / 1e4
    ec = (w * C).sum(1)
    ec2 = (w * C**2 * (1 + cc**2)).sum(1)
    return dict(
        mcv=ev,
        mch=eh,
        mchc=100 * eh / ev,
        rdw=100 * np.sqrt(np.maximum(ev2 - ev**2, 0)) / ev,
        hdw=np.sqrt(np.maximum(ec2 - ec**2, 0)),
        chdw=np.sqrt(np.maximum(eh2 - eh**2, 0)),
    )


def _take(obj, rows):
    return type(obj)(**{f.name: _part(getattr(obj, f.name), rows) for f in fields(obj)})


def _part(value, rows):
    if isinstance(value, np.ndarray):
        return value[rows]
    if isinstance(value, Population):
        return _take(value, rows)
    return value  # per-record constants (condition names)


def _concat(objs):
    first = objs[0]
    out = {}
    for f in fields(first):
        value = getattr(first, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = np.concatenate([getattr(o, f.name) for o in objs])
        elif isinstance(value, Population):
            out[f.name] = _concat([getattr(o, f.name) for o in objs])
        else:
            out[f.name] = value
    return type(first)(**out)


@dataclass(frozen=True)
class Population:
    """Each patient's red-cell population: arrays (n, 4) over :data:`COMPONENTS`.

    ``w`` weights (rows sum to 1), ``M`` mean volume (fL), ``C`` mean CHC (g/dL), ``cv`` volume
    CV, ``cc`` CHC CV. This is what infinitely many cells reveal, and all they reveal.
    """

    w: np.ndarray
    M: np.ndarray
    C: np.ndarray
    cv: np.ndarray
    cc: np.ndarray

    def __len__(self) -> int:
        return len(self.w)

    @property
    def mature_mcv(self) -> np.ndarray:
        return self.M[:, 0]

    @property
    def mature_mchc(self) -> np.ndarray:
        return self.C[:, 0]

    @property
    def mature_cv(self) -> np.ndarray:
        return self.cv[:, 0]

    @property
    def retic_share(self) -> np.ndarray:
        return self.w[:, 1]

    @property
    def abnormal_share(self) -> np.ndarray:
        return self.w[:, 2]

    @property
    def donor_share(self) -> np.ndarray:
        return self.w[:, 3]

    def indices(self) -> dict[str, np.ndarray]:
        """The patient-level red-cell indices (``mixture_indices``), (n,) each."""
        return mixture_indices(self.w, self.M, self.C, self.cv, self.cc)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def take(self, rows) -> Population:
        """The populations of the patients ``rows`` (a slice or an index array)."""
        return _take(self, rows)


@dataclass(frozen=True)
class PatientRecord:
    """Every latent the generator drew, per patient: arrays (n,) unless noted.

    ``sex`` 0 = man, 1 = woman; ``age`` in years; ``condition`` a code into ``conditions``
    (the table's condition names when the record was drawn); ``severity`` in [0, 1] (0 for the
    healthy); ``population`` (:class:`Population`, (n, 4) arrays); ``rbc`` the RBC count
    (10^12/L) with ``rbc_mean`` and ``rbc_sd`` its normal law given all the latents (before
    the lower clip). The cells never show the condition, the severity or the RBC count.
    """

    sex: np.ndarray
    age: np.ndarray
    condition: np.ndarray
    severity: np.ndarray
    population: Population
    rbc: np.ndarray
    rbc_mean: np.ndarray
    rbc_sd: np.ndarray
    conditions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.sex)

    @property
    def condition_name(self) -> np.ndarray:
        """(n,) str: each patient's condition by name."""
        return np.asarray(self.conditions)[self.condition]

    def take(self, rows) -> PatientRecord:
        """The record of the patients ``rows`` (a slice or an index array)."""
        return _take(self, rows)

    @staticmethod
    def concat(records: list[PatientRecord]) -> PatientRecord:
        """One record of all the patients of ``records``, in order."""
        return _concat(records)
