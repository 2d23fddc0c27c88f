r"""Every number of the synthetic cohort, in one table that the generator and the bound both read.

The generator (``flowrbc.synthetic.simulate``) draws patients from this table and the bound
(``flowrbc.synthetic.bound``) integrates over the same table, so a coefficient changed here
changes both together: the bound cannot drift from the data it bounds.

Literature values behind the table (healthy adults): men RBC 4.99 +- 0.36 (10^12/L),
MCV 87.7 +- 3.3 fL, RDW 12.8 +- 0.5 %, Hct SD 2.99; women RBC 4.45 +- 0.27, MCV 86.6 +- 4.1,
RDW 12.9 +- 0.6, Hct SD 2.21; MCH 27-33 pg, MCHC 32-36 g/dL; reticulocytes 0.5-1.5 %.
Conditions: beta-thalassemia trait MCV 63-74 fL with RBC 5.0-6.2; iron deficiency RDW ~18 %
with hypochromic cells (CH < 17 pg); B12/folate deficiency MCV > 100 fL (often >= 110) with a
raised RDW; anemia by the WHO rule Hb < 13.0 g/dL (men), < 12.0 (women).

A condition acts on the healthy baseline through its :class:`Effect`, each coefficient a
:class:`Linear` function of the patient's severity ``s`` in [0, 1]. Values per sex are
``(men, women)`` pairs, indexed by the sex code (0 = man, 1 = woman).

This module imports nothing from the package: it is the root both sides stand on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Linear:
    """A coefficient that moves with the severity: ``at0 + slope * s``."""

    at0: float
    slope: float = 0.0

    def __call__(self, s):
        return self.at0 + self.slope * s


@dataclass(frozen=True)
class Normal:
    """A normal draw, clipped to ``[lo, hi]`` where bounds are given."""

    mean: float
    sd: float
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class Abnormal:
    """A third cell population a condition adds: its share of the own cells, and its volume and
    cell-hemoglobin concentration relative to the patient's mature cells."""

    share: Linear
    volume_ratio: float
    chc_ratio: float


@dataclass(frozen=True)
class Effect:
    """How a condition moves a patient away from the healthy baseline.

    ``mcv_scale`` multiplies the mature-cell MCV; ``mchc_shift`` (g/dL) and ``rdw_shift``
    (percentage points of the mature-cell volume CV) are added; ``retic_scale`` multiplies
    the healthy reticulocyte share unless ``retic_share`` replaces it outright;
    ``retic_volume_shift`` is added to the reticulocytes' volume ratio; ``abnormal`` adds a
    subpopulation; ``donor`` mixes in transfused cells; ``rbc_scale`` (plus
    ``rbc_per_donor_share`` times the donor share) multiplies the healthy RBC count.
    """

    mcv_scale: Linear = Linear(1.0)
    mchc_shift: Linear = Linear(0.0)
    rdw_shift: Linear = Linear(0.0)
    retic_scale: Linear = Linear(1.0)
    retic_share: Linear | None = None
    retic_volume_shift: Linear = Linear(0.0)
    abnormal: Abnormal | None = None
    donor: bool = False
    rbc_scale: Linear = Linear(1.0)
    rbc_per_donor_share: float = 0.0

    def rbc(self, s, donor_share):
        """The factor on the healthy RBC count at severity ``s`` and donor-cell share."""
        return self.rbc_scale.at0 + self.rbc_per_donor_share * donor_share + self.rbc_scale.slope * s


@dataclass(frozen=True)
class Condition:
    """A latent condition: its prevalence per sex, whether the prevalence grows with age
    (``age / Ages.prevalence_reference``), and its effect. ``graded``: whether the patient gets
    a severity at all (the healthy do not: their severity is 0)."""

    name: str
    prevalence: tuple[float, float]
    effect: Effect = Effect()
    age_scaled: bool = False
    graded: bool = True


@dataclass(frozen=True)
class Reference:
    """Healthy whole-blood reference values per sex ``(men, women)``."""

    rbc_mean: tuple[float, float] = (4.99, 4.45)
    rbc_sd: tuple[float, float] = (0.36, 0.27)
    mcv_mean: tuple[float, float] = (87.7, 86.6)
    mcv_sd: tuple[float, float] = (3.3, 4.1)
    rdw_mean: tuple[float, float] = (12.8, 12.9)
    rdw_sd: tuple[float, float] = (0.5, 0.6)
    hct_sd: tuple[float, float] = (2.99, 2.21)

    def rbc_mcv_correlation(self) -> np.ndarray:
        """(2,): the correlation of RBC count and MCV that the reference Hct SD implies.

        The reference Hct SDs are smaller than independent RBC and MCV would give. On the log
        scale, to first order, var(log Hct) = a^2 + b^2 + 2 rho a b with a = CV(RBC) and
        b = CV(MCV); solving gives about -0.36 (men) and -0.45 (women).
        """
        rbc_mean, rbc_sd = np.asarray(self.rbc_mean), np.asarray(self.rbc_sd)
        mcv_mean, mcv_sd = np.asarray(self.mcv_mean), np.asarray(self.mcv_sd)
        a = rbc_sd / rbc_mean
        b = mcv_sd / mcv_mean
        hct = rbc_mean * mcv_mean / 10
        return ((np.asarray(self.hct_sd) / hct) ** 2 - a**2 - b**2) / (2 * a * b)


@dataclass(frozen=True)
class Baseline:
    """Per-patient healthy latents that do not depend on sex."""

    mchc: Normal = Normal(33.8, 0.8)  # mature-cell MCHC, g/dL
    chc_cv: Normal = Normal(0.075, 0.008, 0.04, 0.12)  # CV of the cell Hb concentration
    retic_share: Normal = Normal(0.010, 0.0025, 0.004, 0.020)  # reticulocyte share of the cells


@dataclass(frozen=True)
class Reticulocytes:
    """Reticulocytes against the mature cells of the same patient: larger by ``volume_ratio``
    with the same hemoglobin (so a CHC lower by that ratio), a volume CV wider by
    ``volume_cv_ratio`` and a CHC CV wider by ``chc_cv_ratio``."""

    volume_ratio: float = 1.2
    volume_cv_ratio: float = 1.1
    chc_cv_ratio: float = 1.2

    @property
    def volume_cv_ratio_sq(self) -> float:
        """``volume_cv_ratio ** 2`` rounded to 12 decimals: the decimal square (1.21), where the
        binary product would carry a stray last bit into every derived value."""
        return round(self.volume_cv_ratio**2, 12)


@dataclass(frozen=True)
class Donor:
    """Transfused cells: their share of all cells (uniform), volume and hemoglobin."""

    share: tuple[float, float] = (0.3, 0.7)
    mcv: Normal = Normal(90.0, 3.0)
    chc: float = 33.8
    volume_cv: float = 0.13
    chc_cv: float = 0.075


@dataclass(frozen=True)
class Ages:
    """Ages drawn uniformly from ``lo`` to ``hi`` years (inclusive); an age-scaled condition's
    prevalence is multiplied by ``age / prevalence_reference``."""

    lo: int = 18
    hi: int = 90
    prevalence_reference: float = 54.0


@dataclass(frozen=True)
class Clips:
    """Bounds that keep every drawn population physical; they bind with probability < 1e-3."""

    mature_mcv: tuple[float, float] = (45.0, 140.0)  # fL
    mchc: tuple[float, float] = (24.0, 38.0)  # g/dL
    rdw: tuple[float, float] = (9.0, 30.0)  # mature-cell volume CV, %
    min_baseline_cv: float = 0.05  # the healthy mature-cell volume CV, as a fraction
    min_rbc: float = 0.5  # 10^12/L


CONDITIONS_TABLE = (
    Condition("healthy", (0.62, 0.55), graded=False),
    Condition(  # microcytic, hypochromic, wide, with a hypochromic microcytic tail
        "iron_deficiency", (0.06, 0.16),
        Effect(mcv_scale=Linear(1.0, -0.22), mchc_shift=Linear(0.0, -4.0), rdw_shift=Linear(2.0, 4.0),
               retic_scale=Linear(0.8, -0.4), abnormal=Abnormal(Linear(0.05, 0.30), 0.80, 0.70),
               rbc_scale=Linear(1.0, -0.18)),
    ),
    Condition(  # many small cells, the RBC count raised
        "beta_thal_trait", (0.05, 0.05),
        Effect(mcv_scale=Linear(0.84, -0.12), mchc_shift=Linear(-1.8), rdw_shift=Linear(1.5, 1.0),
               rbc_scale=Linear(1.12, 0.10)),
    ),
    Condition(  # B12 / folate deficiency: macrocytic, few cells, fragments
        "macrocytic", (0.06, 0.05),
        Effect(mcv_scale=Linear(1.20, 0.20), rdw_shift=Linear(1.5, 5.0), retic_scale=Linear(0.5),
               abnormal=Abnormal(Linear(0.02, 0.08), 0.55, 1.0), rbc_scale=Linear(0.85, -0.45)),
        age_scaled=True,
    ),
    Condition(  # reticulocytosis with larger reticulocytes; spherocytes (small, dense)
        "hemolysis", (0.05, 0.05),
        Effect(rdw_shift=Linear(1.0, 2.0), retic_share=Linear(0.03, 0.17), retic_volume_shift=Linear(0.0, 0.1),
               abnormal=Abnormal(Linear(0.0, 0.10), 0.85, 1.12), rbc_scale=Linear(1.0, -0.35)),
    ),
    Condition(  # recent transfusion: microcytic own cells beside normal donor cells
        "transfusion", (0.06, 0.06),
        Effect(mcv_scale=Linear(0.90, -0.18), mchc_shift=Linear(0.0, -3.5), rdw_shift=Linear(3.0), donor=True,
               rbc_scale=Linear(0.6, -0.1), rbc_per_donor_share=0.3),
    ),
    Condition(  # anemia of chronic disease: normo- to mildly microcytic, hypoproliferative
        "chronic_disease", (0.10, 0.08),
        Effect(mcv_scale=Linear(1.0, -0.10), mchc_shift=Linear(0.0, -1.5), rdw_shift=Linear(0.0, 1.0),
               retic_scale=Linear(0.6), rbc_scale=Linear(1.0, -0.28)),
        age_scaled=True,
    ),
)


@dataclass(frozen=True)
class Physiology:
    """The whole table. ``conditions`` are in code order: a patient's condition code indexes it."""

    conditions: tuple[Condition, ...] = CONDITIONS_TABLE
    reference: Reference = Reference()
    baseline: Baseline = Baseline()
    reticulocytes: Reticulocytes = Reticulocytes()
    donor: Donor = Donor()
    ages: Ages = Ages()
    clips: Clips = Clips()
    p_woman: float = 0.5
    who_hb_threshold: tuple[float, float] = (13.0, 12.0)  # g/dL, (men, women)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.conditions)

    def code(self, name: str) -> int:
        """The condition code of ``name``."""
        return self.names.index(name)

    def prior(self, sex: np.ndarray, age: np.ndarray) -> np.ndarray:
        """(n, n_conditions): P(condition | sex, age) as the generator draws it."""
        prevalence = np.array([c.prevalence for c in self.conditions])  # (K, 2)
        prev = prevalence[:, sex].T.copy()  # (n, K)
        factor = np.asarray(age) / self.ages.prevalence_reference
        for k, condition in enumerate(self.conditions):
            if condition.age_scaled:
                prev[:, k] *= factor
        return prev / prev.sum(1, keepdims=True)

    def replace_effect(self, name: str, **changes) -> Physiology:
        """A copy with one condition's effect changed (``dataclasses.replace`` on the effect)."""
        conditions = tuple(replace(c, effect=replace(c.effect, **changes)) if c.name == name else c
                           for c in self.conditions)
        return replace(self, conditions=conditions)


TABLE = Physiology()
