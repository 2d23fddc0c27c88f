r"""Physiology-based synthetic cohort: patients, their red-cell indices, and their cells.

Every patient gets a sex, an age, a latent condition and a severity ``s`` in [0, 1]; from
those, an RBC count and a red-cell population made of up to four correlated log-normal
components, from which cells are drawn.

Components (``k``): 0 mature own cells, 1 reticulocytes (about 20 % larger, same
hemoglobin), 2 an abnormal subpopulation (hypochromic microcytes in iron deficiency,
spherocytes in hemolysis, fragments in megaloblastic anemia), 3 donor cells (transfusion).
Within a component, cell volume ``V`` (fL) and cell hemoglobin concentration ``CHC``
(g/dL) are independent log-normals; hemoglobin content is ``H = V * CHC / 100`` (pg), so
``(log V, log H)`` is bivariate normal with correlation ``sigma_V / sqrt(sigma_V^2 + sigma_C^2)``.

Patient-level indices are the exact moments of that mixture (the values a counter reports
from infinitely many cells), with the conventional definitions:

* ``mcv = E[V]`` (fL), ``mch = E[H]`` (pg), ``mchc = 100 * mch / mcv`` (g/dL)
* ``rdw = 100 * SD(V) / E[V]`` (%, RDW-CV)
* ``hdw = SD(CHC)`` (g/dL; the "hemoglobin distribution width" of Advia-type counters)
* ``chdw = SD(H)`` (pg; the width of the hemoglobin *content* distribution)

For a log-normal with mean ``m`` and coefficient of variation ``c``:
``E[X^2] = m^2 (1 + c^2)``, which gives the mixture moments in closed form.

Labels follow physiology: ``Hct (%) = RBC (10^12/L) * MCV (fL) / 10``,
``Hb (g/dL) = RBC * MCH / 10``, anemia by the WHO rule Hb < 13.0 g/dL (men), < 12.0 (women).

The RBC count is not visible in the cells. In healthy people it is negatively correlated
with the MCV (the reference Hct SDs, 2.99 in men and 2.21 in women, are smaller than
independent RBC and MCV would give; solving for the correlation gives about -0.36 and
-0.45). The part of the RBC count that the cells do not reveal is Gaussian; the best
possible prediction from the cells, sex and age and its error (the *bound*) integrate over
the latents the cell population does not identify (``flowrbc.bound``).

Reference values (healthy adults): men RBC 4.99 +- 0.36, MCV 87.7 +- 3.3, RDW 12.8 +- 0.5;
women RBC 4.45 +- 0.27, MCV 86.6 +- 4.1, RDW 12.9 +- 0.6; MCH 27-33 pg, MCHC 32-36 g/dL;
reticulocytes 0.5-1.5 %. Conditions: beta-thalassemia trait MCV 63-74, RBC 5.0-6.2,
RDW ~15; iron deficiency RDW ~18 with hypochromic cells (CH < 17 pg); B12/folate
deficiency MCV > 100 (often >= 110) with raised RDW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

GENERATOR_VERSION = 1  # bump whenever the same seed would give different data
CHANNELS = ("RBC Volume", "RBC Hb")
CONDITIONS = (
    "healthy",
    "iron_deficiency",
    "beta_thal_trait",
    "macrocytic",  # B12 / folate deficiency
    "hemolysis",  # hemolysis with reticulocytosis
    "transfusion",  # recent transfusion: own cells + donor cells (dimorphic)
    "chronic_disease",  # anemia of chronic disease
)
# Prevalence per condition for (men, women); chronic disease and macrocytosis scale with age.
PREVALENCE = np.array(
    [
        [0.62, 0.55],
        [0.06, 0.16],
        [0.05, 0.05],
        [0.06, 0.05],
        [0.05, 0.05],
        [0.06, 0.06],
        [0.10, 0.08],
    ]
)
WHO_HB_THRESHOLD = {"M": 13.0, "F": 12.0}

# Healthy reference values, index 0 = men, 1 = women.
_RBC_MEAN = np.array([4.99, 4.45])
_RBC_SD = np.array([0.36, 0.27])
_MCV_MEAN = np.array([87.7, 86.6])
_MCV_SD = np.array([3.3, 4.1])
_RDW_MEAN = np.array([12.8, 12.9])
_RDW_SD = np.array([0.5, 0.6])
_HCT_SD = np.array([2.99, 2.21])


def _rbc_mcv_correlation() -> np.ndarray:
    """Correlation of RBC and MCV implied by the reference Hct SD (log-scale, first order):
    var(log Hct) = a^2 + b^2 + 2 rho a b with a = CV(RBC), b = CV(MCV)."""
    a = _RBC_SD / _RBC_MEAN
    b = _MCV_SD / _MCV_MEAN
    hct = _RBC_MEAN * _MCV_MEAN / 10
    return ((_HCT_SD / hct) ** 2 - a**2 - b**2) / (2 * a * b)


_RHO = _rbc_mcv_correlation()  # about [-0.36, -0.45]
_BLOCK = 4096  # patients per random stream; same seed -> same patients for any cohort size
_N_COMPONENTS = 4


@dataclass
class SimulatedCohort:
    """Cells of all patients, contiguous per patient.

    ``cells``: float32 (total_cells, 2) columns [volume fL, hemoglobin pg];
    ``offsets``: int64 (n_patients + 1,), patient i owns ``cells[offsets[i]:offsets[i+1]]``;
    ``samples``: one row per patient (see ``simulate_cohort``); ``bound``: the best errors
    achievable from the cells plus sex and age (``flowrbc.bound``), with the latent oracle's
    beside them for contrast; ``populations``: each patient's exact population parameters
    (``w, M, C, cv, cc``, (n, 4) each: what infinitely many cells reveal).
    """

    cells: np.ndarray
    offsets: np.ndarray
    samples: pd.DataFrame
    bound: dict
    populations: dict

    @property
    def n_patients(self) -> int:
        return len(self.offsets) - 1


# --------------------------------------------------------------------------- patients


def _draw_patients(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Patient-level latent parameters for ``n`` patients (all arrays of length n, or (n, 4)
    for the per-component arrays ``w, M, c, C, cc``)."""
    sex = (rng.random(n) < 0.5).astype(np.int64)  # 0 = man, 1 = woman
    age = rng.integers(18, 91, size=n)
    prev = PREVALENCE[:, sex].T.copy()  # (n, 7)
    age_factor = age / 54.0
    prev[:, 3] *= age_factor
    prev[:, 6] *= age_factor
    cum = np.cumsum(prev / prev.sum(1, keepdims=True), axis=1)
    condition = (rng.random(n)[:, None] >= cum[:, :-1]).sum(1)
    severity = np.where(condition == 0, 0.0, rng.random(n))

    # The healthy baseline every patient starts from.
    z_mcv = rng.standard_normal(n)
    z_rbc = rng.standard_normal(n)  # the part of the RBC count the cells never reveal
    rho = _RHO[sex]
    mcv0 = _MCV_MEAN[sex] + _MCV_SD[sex] * z_mcv
    rbc0_mean = _RBC_MEAN[sex] + _RBC_SD[sex] * rho * z_mcv
    rbc0_sd = _RBC_SD[sex] * np.sqrt(1 - rho**2)
    rdw0 = rng.normal(_RDW_MEAN[sex], _RDW_SD[sex])  # whole-blood RDW-CV, %
    mchc0 = rng.normal(33.8, 0.8, n)
    chc_cv0 = np.clip(rng.normal(0.075, 0.008, n), 0.04, 0.12)
    retic0 = np.clip(rng.normal(0.010, 0.0025, n), 0.004, 0.02)
    donor_frac = rng.uniform(0.3, 0.7, n)
    donor_mcv = rng.normal(90.0, 3.0, n)

    # The reference MCV and RDW are whole-blood values (mature cells + reticulocytes, which
    # are 1.2x larger with a 1.1x wider spread): solve for the mature population's mean and
    # CV that give exactly them. With f = retic share, r = 1.2:
    #   E[V] = M ((1-f) + f r),  E[V^2] = M^2 ((1-f)(1+c^2) + f r^2 (1 + 1.21 c^2)).
    f, r = retic0, 1.2
    m1 = (1 - f) + f * r
    a, b = (1 - f) + f * r**2, (1 - f) + 1.21 * f * r**2
    c0_sq = ((1 + (rdw0 / 100) ** 2) * m1**2 - a) / b
    mature_mcv = mcv0 / m1
    mchc = mchc0.copy()
    rdw = 100 * np.sqrt(np.maximum(c0_sq, 0.05**2))  # within-population CV, %
    retic = retic0.copy()
    retic_ratio = np.full(n, 1.2)
    ab_frac = np.zeros(n)  # abnormal subpopulation: fraction, volume ratio, CHC ratio
    ab_vol = np.ones(n)
    ab_chc = np.ones(n)
    donor = np.zeros(n)
    rbc_mult = np.ones(n)
    s = severity

    m = condition == 1  # iron deficiency: microcytic, hypochromic, wide, hypochromic tail
    mature_mcv[m] *= 1 - 0.22 * s[m]
    mchc[m] -= 4.0 * s[m]
    rdw[m] += 2.0 + 4.0 * s[m]
    retic[m] *= 0.8 - 0.4 * s[m]
    ab_frac[m], ab_vol[m], ab_chc[m] = 0.05 + 0.30 * s[m], 0.80, 0.70
    rbc_mult[m] = 1 - 0.18 * s[m]

    m = condition == 2  # beta-thalassemia trait: many small cells, RBC count raised
    mature_mcv[m] *= 0.84 - 0.12 * s[m]
    mchc[m] -= 1.8
    rdw[m] += 1.5 + 1.0 * s[m]
    rbc_mult[m] = 1.12 + 0.10 * s[m]

    m = condition == 3  # B12/folate deficiency: macrocytic, few cells, fragments
    mature_mcv[m] *= 1.20 + 0.20 * s[m]
    rdw[m] += 1.5 + 5.0 * s[m]
    retic[m] *= 0.5
    ab_frac[m], ab_vol[m], ab_chc[m] = 0.02 + 0.08 * s[m], 0.55, 1.0
    rbc_mult[m] = 0.85 - 0.45 * s[m]

    m = condition == 4  # hemolysis: reticulocytosis, spherocytes (small, dense)
    retic[m] = 0.03 + 0.17 * s[m]
    retic_ratio[m] = 1.2 + 0.1 * s[m]
    rdw[m] += 1.0 + 2.0 * s[m]
    ab_frac[m], ab_vol[m], ab_chc[m] = 0.10 * s[m], 0.85, 1.12
    rbc_mult[m] = 1 - 0.35 * s[m]

    m = condition == 5  # transfusion: microcytic own cells + normal donor cells
    mature_mcv[m] *= 0.90 - 0.18 * s[m]
    mchc[m] -= 3.5 * s[m]
    rdw[m] += 3.0
    donor[m] = donor_frac[m]
    rbc_mult[m] = 0.6 + 0.3 * donor_frac[m] - 0.1 * s[m]

    m = condition == 6  # chronic disease: normo- to mildly microcytic, hypoproliferative
    mature_mcv[m] *= 1 - 0.10 * s[m]
    mchc[m] -= 1.5 * s[m]
    rdw[m] += 1.0 * s[m]
    retic[m] *= 0.6
    rbc_mult[m] = 1 - 0.28 * s[m]

    mature_mcv = np.clip(mature_mcv, 45.0, 140.0)
    mchc = np.clip(mchc, 24.0, 38.0)
    c = np.clip(rdw, 9.0, 30.0) / 100

    # Per-component arrays, (n, 4): mature, reticulocytes, abnormal, donor.
    w = np.stack([np.zeros(n), retic * (1 - donor), ab_frac * (1 - donor), donor], axis=1)
    w[:, 0] = 1 - w[:, 1:].sum(1)
    M = np.stack([mature_mcv, mature_mcv * retic_ratio, mature_mcv * ab_vol, donor_mcv], 1)
    C = np.stack([mchc, mchc / retic_ratio, mchc * ab_chc, np.full(n, 33.8)], 1)
    cv = np.stack([c, c * 1.1, c, np.full(n, 0.13)], 1)
    cc = np.stack([chc_cv0, chc_cv0 * 1.2, chc_cv0, np.full(n, 0.075)], 1)

    rbc_mean = rbc_mult * rbc0_mean
    rbc_sd = rbc_mult * rbc0_sd
    rbc = np.maximum(rbc_mean + rbc_sd * z_rbc, 0.5)
    return dict(
        sex=sex, age=age, condition=condition, severity=severity, retic=w[:, 1],
        rbc=rbc, rbc_mean=rbc_mean, rbc_sd=rbc_sd, w=w, M=M, C=C, cv=cv, cc=cc,
    )


def mixture_indices(w, M, C, cv, cc) -> dict[str, np.ndarray]:
    """Exact red-cell indices of a mixture of log-normal components (arrays (n, K)).

    ``V_k ~ logN`` with mean ``M_k``, CV ``cv_k``; ``CHC_k ~ logN`` with mean ``C_k``, CV
    ``cc_k``, independent; ``H = V CHC / 100``. Moments: ``E[V^2] = sum_k w_k M_k^2 (1+cv_k^2)``,
    ``E[H^2] = sum_k w_k M_k^2 C_k^2 (1+cv_k^2)(1+cc_k^2) / 10^4``.
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


# --------------------------------------------------------------------------- cells


def _draw_cells(rng: np.random.Generator, p: dict, n_cells: int, out: np.ndarray) -> None:
    """Fill ``out`` (n * n_cells, 2) float32 with cells of the n patients in ``p``."""
    n = len(p["rbc"])
    cum = np.cumsum(p["w"], axis=1)[:, :-1, None]  # (n, 3, 1)
    u = rng.random((n, n_cells))  # (n, m)
    comp = (u[:, None, :] >= cum).sum(1)  # (n, m) component of each cell
    sig_v = np.sqrt(np.log1p(p["cv"] ** 2))  # (n, 4) log-scale SDs
    sig_c = np.sqrt(np.log1p(p["cc"] ** 2))
    mu_v = np.log(p["M"]) - sig_v**2 / 2  # log-normal with the given mean
    mu_c = np.log(p["C"] / 100) - sig_c**2 / 2
    take = lambda a: np.take_along_axis(a, comp, axis=1)  # noqa: E731  (n, m)
    log_v = take(mu_v) + take(sig_v) * rng.standard_normal((n, n_cells))
    log_h = log_v + take(mu_c) + take(sig_c) * rng.standard_normal((n, n_cells))
    out[:, 0] = np.exp(log_v).reshape(-1)
    out[:, 1] = np.exp(log_h).reshape(-1)


# --------------------------------------------------------------------------- cohort


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * (1 + np.vectorize(erf)(np.asarray(x) / math.sqrt(2)))


def simulate_cohort(n_patients: int, n_cells: int = 1000, *, seed: int = 0) -> SimulatedCohort:
    """Simulate ``n_patients`` patients with ``n_cells`` cells each (deterministic per seed).

    ``samples`` columns: sample_id, sex ("M"/"F"), age, condition, severity, hematocrit (%),
    hemoglobin (g/dL), rbc_count (10^12/L), mcv, mch, mchc, rdw, hdw, chdw, retic_fraction,
    anemia (bool); bound_hematocrit, bound_hematocrit_sd and bound_anemia_probability: the
    posterior mean and SD of the hematocrit and the probability of anemia given the patient's
    cell population (infinitely many cells), sex and age (``flowrbc.bound``).
    """
    import pandas as pd

    from flowrbc.bound import cell_bound

    if n_patients < 1 or n_cells < 1:
        raise ValueError(f"n_patients and n_cells must be >= 1 (got {n_patients}, {n_cells})")
    cells = np.empty((n_patients * n_cells, 2), dtype=np.float32)
    parts = []
    for b0 in range(0, n_patients, _BLOCK):
        block = b0 // _BLOCK
        k = min(_BLOCK, n_patients - b0)
        prng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 0)))
        p = {key: v[:k] for key, v in _draw_patients(prng, _BLOCK).items()}
        crng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 1)))
        # Cells in sub-blocks bound the float64 temporaries (~100 MB) at any cohort size.
        step = max(1, (1 << 21) // n_cells)
        for s0 in range(0, k, step):
            sub = {key: v[s0 : s0 + step] for key, v in p.items()}
            lo = (b0 + s0) * n_cells
            _draw_cells(crng, sub, n_cells, cells[lo : lo + len(sub["rbc"]) * n_cells])
        parts.append(p)
    p = {key: np.concatenate([q[key] for q in parts]) for key in parts[0]}

    idx = mixture_indices(p["w"], p["M"], p["C"], p["cv"], p["cc"])
    sex = np.where(p["sex"] == 0, "M", "F")
    rbc = p["rbc"]
    hct = rbc * idx["mcv"] / 10
    hb = rbc * idx["mch"] / 10
    threshold = np.where(p["sex"] == 0, WHO_HB_THRESHOLD["M"], WHO_HB_THRESHOLD["F"])
    width = max(6, len(str(n_patients)))
    samples = pd.DataFrame(
        {
            "sample_id": [f"S{i + 1:0{width}d}" for i in range(n_patients)],
            "sex": sex,
            "age": p["age"].astype(np.int64),
            "condition": np.asarray(CONDITIONS)[p["condition"]],
            "severity": p["severity"],
            "hematocrit": hct,
            "hemoglobin": hb,
            "rbc_count": rbc,
            **{key: idx[key] for key in ("mcv", "mch", "mchc", "rdw", "hdw", "chdw")},
            "retic_fraction": p["retic"],
            "anemia": hb < threshold,
        }
    )
    populations = {key: p[key] for key in ("w", "M", "C", "cv", "cc")}
    post = cell_bound(populations, p["sex"], p["age"], threshold)
    for key, value in post.items():
        samples[f"bound_{key}"] = value
    bound = _bound_summary(samples, p["rbc_sd"] * idx["mcv"] / 10, p["rbc_mean"], p["rbc_sd"], idx["mch"], threshold)
    offsets = np.arange(n_patients + 1, dtype=np.int64) * n_cells
    return SimulatedCohort(cells=cells, offsets=offsets, samples=samples, bound=bound, populations=populations)


def _bound_summary(samples, latent_sd, rbc_mean, rbc_sd, mch, threshold) -> dict:
    """Cohort-level figures of the cell bound (``bound_*``) and, for contrast, of the latent
    oracle (``latent_*``), which also knows the latents the cells do not reveal (a disease's
    severity where the population shows it only combined with the patient's healthy MCV):
    no predictor of the cells can reach the latter.

    Bound MSE = mean posterior variance (its expected value), ``_realized`` = the error of
    the posterior mean on these patients; anemia accuracy = mean of max(P, 1 − P).
    """
    p = samples["bound_anemia_probability"].to_numpy()
    err = samples["hematocrit"].to_numpy() - samples["bound_hematocrit"].to_numpy()
    p_latent = _norm_cdf((threshold - rbc_mean * mch / 10) / (rbc_sd * mch / 10))
    return {
        "bound_hematocrit_mse": float(np.mean(samples["bound_hematocrit_sd"].to_numpy() ** 2)),
        "bound_hematocrit_mse_realized": float(np.mean(err**2)),
        "bound_hematocrit_mae_realized": float(np.mean(np.abs(err))),
        "bound_anemia_accuracy": float(np.mean(np.maximum(p, 1 - p))),
        "bound_anemia_accuracy_realized": float(np.mean((p > 0.5) == samples["anemia"].to_numpy())),
        "latent_hematocrit_mse": float(np.mean(latent_sd**2)),
        "latent_anemia_accuracy": float(np.mean(np.maximum(p_latent, 1 - p_latent))),
    }


def summary_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-condition summary: n, share, mean Hct, Hb, MCV, MCH, RDW, anemia rate."""
    g = samples.groupby("condition", sort=False)
    out = g.agg(
        n=("hematocrit", "size"),
        hematocrit=("hematocrit", "mean"),
        hemoglobin=("hemoglobin", "mean"),
        rbc_count=("rbc_count", "mean"),
        mcv=("mcv", "mean"),
        mch=("mch", "mean"),
        rdw=("rdw", "mean"),
        anemia_rate=("anemia", "mean"),
    )
    out.insert(1, "share", out["n"] / len(samples))
    order = [c for c in CONDITIONS if c in out.index]
    return out.loc[order]


# --------------------------------------------------------------------------- files


def write_simulated(out_dir, n_patients: int, n_cells: int = 1000, seed: int = 0, *,
                    on_file=None) -> Path:
    """Write one FCS file per patient (channels ``RBC Volume`` [fL], ``RBC Hb`` [pg]; keywords
    ``FLOWRBC_SEX`` and ``FLOWRBC_AGE``) and ``clinical.csv`` into ``out_dir``; same seed, same
    bytes. Returns the clinical.csv path.

    ``on_file(i, path)`` is called after each file (for progress reporting).
    """
    from flowrbc.io.fcs import write_fcs_arrays

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = simulate_cohort(n_patients, n_cells, seed=seed)
    samples = sim.samples
    files = [f"{sid}.fcs" for sid in samples["sample_id"]]
    for i, sid in enumerate(samples["sample_id"]):
        keywords = {
            "$CYT": "flowrbc-simulator",
            "$SMNO": sid,
            "FLOWRBC_SAMPLE_ID": sid,
            "FLOWRBC_GENERATOR": f"simulate v{GENERATOR_VERSION} seed {seed}",
            "FLOWRBC_SEX": str(samples["sex"].iloc[i]),  # what a request carries besides the cells
            "FLOWRBC_AGE": str(int(samples["age"].iloc[i])),
        }
        path = out / files[i]
        cells = sim.cells[sim.offsets[i] : sim.offsets[i + 1]]
        write_fcs_arrays(path, cells, list(CHANNELS), labels=["Volume (fL)", "Hemoglobin (pg)"],
                         keywords=keywords)
        if on_file is not None:
            on_file(i, path)
    table = samples.drop(columns=[c for c in samples.columns if c.startswith("bound_")])
    table.insert(1, "file", files)
    clinical = out / "clinical.csv"
    tmp = clinical.with_name(clinical.name + ".tmp")
    table.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
    tmp.replace(clinical)
    return clinical
