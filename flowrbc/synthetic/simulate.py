r"""Physiology-based synthetic cohort: patients, their red-cell indices, and their cells.

Every patient gets a sex, an age, a latent condition and a severity ``s`` in [0, 1]; from
those, an RBC count and a red-cell population of up to four correlated log-normal components
(``flowrbc.synthetic.record``), from which cells are drawn. Every coefficient comes from the
table in ``flowrbc.synthetic.physiology``, read when the generator runs; what was drawn is
returned as a :class:`~flowrbc.synthetic.record.PatientRecord` beside the cells.

Patient-level indices are the exact moments of the mixture (``mixture_indices``). Labels
follow physiology: ``Hct (%) = RBC (10^12/L) * MCV (fL) / 10``, ``Hb (g/dL) = RBC * MCH / 10``,
anemia by the WHO rule on Hb.

The RBC count is not visible in the cells. In healthy people it is negatively correlated with
the MCV (``Reference.rbc_mcv_correlation``). The part of it the cells do not reveal is
Gaussian; the best possible prediction from the cells, sex and age and its error (the
*bound*, ``flowrbc.synthetic.bound``) integrate over the latents the population does not
identify. ``simulate_cohort`` adds the bound's columns to the sample table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowrbc.synthetic import physiology
from flowrbc.synthetic.bound import bound_summary, cell_bound
from flowrbc.synthetic.physiology import Normal, Physiology
from flowrbc.synthetic.record import PatientRecord, Population, mixture_indices

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

__all__ = ["CHANNELS", "CONDITIONS", "GENERATOR_VERSION", "SimulatedCohort", "draw_patients",
           "mixture_indices", "simulate_cohort", "summary_table", "write_simulated"]

GENERATOR_VERSION = 1  # bump whenever the same seed would give different data
CHANNELS = ("RBC Volume", "RBC Hb")
CONDITIONS = physiology.TABLE.names
COMPONENTS = ("mature", "reticulocyte", "abnormal", "donor")  # a cell's population component
_BLOCK = 4096  # patients per random stream; same seed -> same patients for any cohort size


@dataclass
class SimulatedCohort:
    """Cells of all patients, contiguous per patient.

    ``cells``: float32 (total_cells, 2) columns [volume fL, hemoglobin pg];
    ``offsets``: int64 (n_patients + 1,), patient i owns ``cells[offsets[i]:offsets[i+1]]``;
    ``samples``: one row per patient (see ``simulate_cohort``); ``bound``: the best errors
    achievable from the cells plus sex and age (``flowrbc.synthetic.bound``), with the latent
    oracle's beside them for contrast; ``record``: every latent drawn per patient.
    """

    cells: np.ndarray
    offsets: np.ndarray
    samples: pd.DataFrame
    bound: dict
    record: PatientRecord
    components: np.ndarray | None = None  # (total_cells,) int8 component of each cell (``COMPONENTS``); None: not kept

    @property
    def n_patients(self) -> int:
        return len(self.offsets) - 1

    @property
    def populations(self) -> dict[str, np.ndarray]:
        """Each patient's exact population parameters ``w, M, C, cv, cc``, (n, 4) each."""
        return self.record.population.as_dict()


# --------------------------------------------------------------------------- patients


def _normal(rng: np.random.Generator, d: Normal, n: int) -> np.ndarray:
    x = rng.normal(d.mean, d.sd, n)
    return x if d.lo is None and d.hi is None else np.clip(x, d.lo, d.hi)


def _baseline(rng: np.random.Generator, sex: np.ndarray, t: Physiology) -> dict[str, np.ndarray]:
    """The healthy baseline every patient starts from, (n,) arrays.

    The reference MCV and RDW are whole-blood values (mature cells plus reticulocytes, which
    are larger by ``r`` with a volume CV wider by ``k``, ``physiology.Reticulocytes``): the
    mature population's mean ``M`` and CV ``c`` are solved to give exactly them. With f the
    reticulocyte share: ``E[V] = M ((1-f) + f r)``, ``E[V^2] = M^2 ((1-f)(1+c^2) + f r^2 (1 + k^2 c^2))``.
    """
    n, ref = len(sex), t.reference
    z_mcv = rng.standard_normal(n)
    z_rbc = rng.standard_normal(n)  # the part of the RBC count the cells never reveal
    rho = ref.rbc_mcv_correlation()[sex]
    rbc_mean, rbc_sd = np.asarray(ref.rbc_mean)[sex], np.asarray(ref.rbc_sd)[sex]
    mcv0 = np.asarray(ref.mcv_mean)[sex] + np.asarray(ref.mcv_sd)[sex] * z_mcv
    rdw0 = rng.normal(np.asarray(ref.rdw_mean)[sex], np.asarray(ref.rdw_sd)[sex])  # whole-blood RDW-CV, %
    mchc0 = _normal(rng, t.baseline.mchc, n)
    chc_cv0 = _normal(rng, t.baseline.chc_cv, n)
    f = _normal(rng, t.baseline.retic_share, n)  # healthy reticulocyte share
    donor_share = rng.uniform(*t.donor.share, n)
    donor_mcv = _normal(rng, t.donor.mcv, n)

    r = t.reticulocytes.volume_ratio
    m1 = (1 - f) + f * r
    a, b = (1 - f) + f * r**2, (1 - f) + t.reticulocytes.volume_cv_ratio_sq * f * r**2
    c0_sq = ((1 + (rdw0 / 100) ** 2) * m1**2 - a) / b
    return dict(
        z_rbc=z_rbc, rbc0_mean=rbc_mean + rbc_sd * rho * z_mcv, rbc0_sd=rbc_sd * np.sqrt(1 - rho**2),
        mature_mcv=mcv0 / m1, mchc=mchc0, chc_cv=chc_cv0, retic=f,
        rdw=100 * np.sqrt(np.maximum(c0_sq, t.clips.min_baseline_cv**2)),  # mature-cell volume CV, %
        donor_share=donor_share, donor_mcv=donor_mcv,
    )


def _draw_patients(rng: np.random.Generator, n: int, t: Physiology) -> PatientRecord:
    """The latents of ``n`` patients from one random stream."""
    sex = (rng.random(n) < t.p_woman).astype(np.int64)  # 0 = man, 1 = woman
    age = rng.integers(t.ages.lo, t.ages.hi + 1, size=n)
    cum = np.cumsum(t.prior(sex, age), axis=1)  # (n, K)
    condition = (rng.random(n)[:, None] >= cum[:, :-1]).sum(1)
    graded = np.array([c.graded for c in t.conditions])
    s = np.where(graded[condition], rng.random(n), 0.0)

    base = _baseline(rng, sex, t)
    mature_mcv, mchc, rdw, retic = base["mature_mcv"], base["mchc"], base["rdw"], base["retic"]
    retic_ratio = np.full(n, t.reticulocytes.volume_ratio)
    ab_share, ab_vol, ab_chc = np.zeros(n), np.ones(n), np.ones(n)  # the abnormal subpopulation
    donor = np.zeros(n)
    rbc_mult = np.ones(n)
    for code, cond in enumerate(t.conditions):  # each condition moves its own patients; healthy: identity
        m, e = condition == code, cond.effect
        sm = s[m]
        mature_mcv[m] *= e.mcv_scale(sm)
        mchc[m] += e.mchc_shift(sm)
        rdw[m] += e.rdw_shift(sm)
        retic[m] = e.retic_share(sm) if e.retic_share is not None else retic[m] * e.retic_scale(sm)
        retic_ratio[m] = t.reticulocytes.volume_ratio + e.retic_volume_shift(sm)
        if e.abnormal is not None:
            ab_share[m], ab_vol[m], ab_chc[m] = e.abnormal.share(sm), e.abnormal.volume_ratio, e.abnormal.chc_ratio
        if e.donor:
            donor[m] = base["donor_share"][m]
        rbc_mult[m] = e.rbc(sm, donor[m])

    clips, ret, dn = t.clips, t.reticulocytes, t.donor
    mature_mcv = np.clip(mature_mcv, *clips.mature_mcv)
    mchc = np.clip(mchc, *clips.mchc)
    c = np.clip(rdw, *clips.rdw) / 100
    chc_cv = base["chc_cv"]

    # (n, 4) per component: mature, reticulocytes, abnormal, donor.
    w = np.stack([np.zeros(n), retic * (1 - donor), ab_share * (1 - donor), donor], axis=1)
    w[:, 0] = 1 - w[:, 1:].sum(1)
    M = np.stack([mature_mcv, mature_mcv * retic_ratio, mature_mcv * ab_vol, base["donor_mcv"]], 1)
    C = np.stack([mchc, mchc / retic_ratio, mchc * ab_chc, np.full(n, dn.chc)], 1)
    cv = np.stack([c, c * ret.volume_cv_ratio, c, np.full(n, dn.volume_cv)], 1)
    cc = np.stack([chc_cv, chc_cv * ret.chc_cv_ratio, chc_cv, np.full(n, dn.chc_cv)], 1)

    rbc_mean = rbc_mult * base["rbc0_mean"]
    rbc_sd = rbc_mult * base["rbc0_sd"]
    rbc = np.maximum(rbc_mean + rbc_sd * base["z_rbc"], clips.min_rbc)
    return PatientRecord(sex=sex, age=age, condition=condition, severity=s,
                         population=Population(w=w, M=M, C=C, cv=cv, cc=cc),
                         rbc=rbc, rbc_mean=rbc_mean, rbc_sd=rbc_sd, conditions=t.names)


def _streams(n_patients: int):
    """(block, first patient, patients) per random stream: patient i is drawn from stream
    ``i // _BLOCK`` whatever the cohort size, so a larger cohort extends a smaller one."""
    for b0 in range(0, n_patients, _BLOCK):
        yield b0 // _BLOCK, b0, min(_BLOCK, n_patients - b0)


def draw_patients(n_patients: int, seed: int = 0, table: Physiology | None = None) -> PatientRecord:
    """The record of the patients of ``simulate_cohort(n_patients, any cells, seed=seed)``,
    without their cells; ``table`` defaults to ``physiology.TABLE``."""
    t = physiology.TABLE if table is None else table
    parts = []
    for block, _, k in _streams(n_patients):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 0)))
        parts.append(_draw_patients(rng, _BLOCK, t).take(slice(0, k)))
    return PatientRecord.concat(parts)


# --------------------------------------------------------------------------- cells


def _draw_cells(rng: np.random.Generator, pop: Population, n_cells: int, out: np.ndarray,
                comp_out: np.ndarray | None = None) -> None:
    """Fill ``out`` (n * n_cells, 2) float32 with cells of the n patients of ``pop`` and, if
    given, ``comp_out`` (n * n_cells,) with each cell's component (index into ``COMPONENTS``)."""
    n = len(pop)
    cum = np.cumsum(pop.w, axis=1)[:, :-1, None]  # (n, 3, 1)
    u = rng.random((n, n_cells))  # (n, m)
    comp = (u[:, None, :] >= cum).sum(1)  # (n, m) component of each cell
    sig_v = np.sqrt(np.log1p(pop.cv**2))  # (n, 4) log-scale SDs
    sig_c = np.sqrt(np.log1p(pop.cc**2))
    mu_v = np.log(pop.M) - sig_v**2 / 2  # log-normal with the given mean
    mu_c = np.log(pop.C / 100) - sig_c**2 / 2
    take = lambda a: np.take_along_axis(a, comp, axis=1)  # noqa: E731  (n, m)
    log_v = take(mu_v) + take(sig_v) * rng.standard_normal((n, n_cells))
    log_h = log_v + take(mu_c) + take(sig_c) * rng.standard_normal((n, n_cells))
    out[:, 0] = np.exp(log_v).reshape(-1)
    out[:, 1] = np.exp(log_h).reshape(-1)
    if comp_out is not None:
        comp_out[:] = comp.reshape(-1)


# --------------------------------------------------------------------------- cohort


def simulate_cohort(n_patients: int, n_cells: int = 1000, *, seed: int = 0, components: bool = False) -> SimulatedCohort:
    """Simulate ``n_patients`` patients with ``n_cells`` cells each (deterministic per seed).

    ``samples`` columns: sample_id, sex ("M"/"F"), age, condition, severity, hematocrit (%),
    hemoglobin (g/dL), rbc_count (10^12/L), mcv, mch, mchc, rdw, hdw, chdw, retic_fraction,
    anemia (bool); bound_hematocrit, bound_hematocrit_sd and bound_anemia_probability: the
    posterior mean and SD of the hematocrit and the probability of anemia given the patient's
    cell population (infinitely many cells), sex and age (``flowrbc.synthetic.bound``).
    ``components``: also keep each cell's component (``SimulatedCohort.components``); the
    cells are the same either way.
    """
    import pandas as pd

    if n_patients < 1 or n_cells < 1:
        raise ValueError(f"n_patients and n_cells must be >= 1 (got {n_patients}, {n_cells})")
    t = physiology.TABLE
    record = draw_patients(n_patients, seed, t)
    cells = np.empty((n_patients * n_cells, 2), dtype=np.float32)
    comp = np.empty(n_patients * n_cells, dtype=np.int8) if components else None
    step = max(1, (1 << 21) // n_cells)  # sub-blocks bound the float64 temporaries (~100 MB)
    for block, b0, k in _streams(n_patients):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 1)))
        for lo in range(b0, b0 + k, step):
            hi = min(lo + step, b0 + k)
            _draw_cells(rng, record.population.take(slice(lo, hi)), n_cells, cells[lo * n_cells : hi * n_cells],
                        None if comp is None else comp[lo * n_cells : hi * n_cells])

    idx = record.population.indices()
    rbc = record.rbc
    hb = rbc * idx["mch"] / 10
    threshold = np.asarray(t.who_hb_threshold)[record.sex]
    width = max(6, len(str(n_patients)))
    samples = pd.DataFrame(
        {
            "sample_id": [f"S{i + 1:0{width}d}" for i in range(n_patients)],
            "sex": np.where(record.sex == 0, "M", "F"),
            "age": record.age.astype(np.int64),
            "condition": record.condition_name,
            "severity": record.severity,
            "hematocrit": rbc * idx["mcv"] / 10,
            "hemoglobin": hb,
            "rbc_count": rbc,
            **{key: idx[key] for key in ("mcv", "mch", "mchc", "rdw", "hdw", "chdw")},
            "retic_fraction": record.population.retic_share,
            "anemia": hb < threshold,
        }
    )
    for key, value in cell_bound(record, t).items():
        samples[f"bound_{key}"] = value
    bound = bound_summary(record, samples, t)
    offsets = np.arange(n_patients + 1, dtype=np.int64) * n_cells
    return SimulatedCohort(cells=cells, offsets=offsets, samples=samples, bound=bound, record=record,
                           components=comp)


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
    order = [c for c in physiology.TABLE.names if c in out.index]
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
