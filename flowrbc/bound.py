r"""The best prediction the cells allow: the synthetic generator's Bayes bound.

Infinitely many cells of a patient reveal the patient's red-cell *population*: the weights,
means and spreads of its log-normal components (``w, M, C, cv, cc`` in ``flowrbc.simulate``).
They do not reveal the latents behind it: a mature-cell MCV of 80 fL may be a healthy small
MCV or a mild chronic disease of a larger one, and the RBC count is never seen. The bound
conditions on what the population reveals, plus sex and age, and integrates over the rest:

    E[Hct | pop, sex, age] = MCV / 10 · E[RBC | pop, sex, age]
    Var[Hct | pop, sex, age] = (MCV / 10)^2 · (E[sd_RBC^2] + Var[E[RBC | latents]])

with ``RBC | latents ~ N(m(latents), sd(latents)^2)`` as the generator draws it. Its mean
squared error E[Var] is the lowest any predictor of the cells, sex and age can reach in
expectation (finite cells only add error); P(anemia | pop, sex, age) is the Bayes-optimal
probability, so its accuracy, Brier score and AUROC bound those of any classifier.

How the posterior is found, condition by condition (``s`` = severity, uniform on [0, 1]):

* iron deficiency, macrocytic: the abnormal subpopulation's weight gives ``s`` exactly;
* hemolysis: the reticulocytes' volume ratio 1.2 + 0.1 s gives ``s``; the healthy
  reticulocyte share is unseen and is integrated (it sets the mature-cell share of the MCV);
* transfusion: the donor share is seen; ``s`` is integrated against the mature MCV and MCHC;
* healthy, beta-thalassemia trait, chronic disease show the same kind of population (no
  abnormal or donor cells): the condition and ``s`` are integrated jointly, each weighed by
  its prevalence (for the patient's sex and age) and by how likely it makes the observed
  mature MCV, MCHC, RDW and reticulocyte share.

Each integral is a trapezoid rule on a fine grid. Clipping bounds of the generator that bind
with probability below 1e-3 (mature MCV in [45, 140] fL, MCHC in [24, 38] g/dL, RDW in
[9, 30] %, RBC ≥ 0.5) are not modelled; the clipped reticulocyte share (an atom at each bound)
is.
"""

from __future__ import annotations

import math

import numpy as np

from flowrbc.simulate import (
    _MCV_MEAN,
    _MCV_SD,
    _RBC_MEAN,
    _RBC_SD,
    _RDW_MEAN,
    _RDW_SD,
    _RHO,
    PREVALENCE,
    mixture_indices,
)

GRID = 201  # grid points per integral: within 5e-4 (Hct) and 2e-5 (P) of a 1601-point grid
_BLOCK = 8192  # patients per pass: bounds the (patients, grid) temporaries
_RETIC = (0.010, 0.0025, 0.004, 0.020)  # healthy reticulocyte share: mean, SD, clip bounds
_MCHC0 = (33.8, 0.8)  # healthy MCHC: mean, SD
_ATOM = 1e4  # log-weight lift of a clipped (atomic) reticulocyte share over any density value
_TOL = 1e-6


def _log_phi(z):
    return -0.5 * z * z - 0.5 * math.log(2 * math.pi)


def _norm_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)


def _log_retic(f0):
    """Log prior of the healthy reticulocyte share ``f0``: a clipped normal, so a density inside
    (0.004, 0.020) and an atom (lifted by ``_ATOM``) at each bound; -inf outside."""
    mean, sd, lo, hi = _RETIC
    f0 = np.asarray(f0, np.float64)
    inside = (f0 > lo * (1 + _TOL)) & (f0 < hi * (1 - _TOL))
    dens = _log_phi((f0 - mean) / sd) - math.log(sd)
    at_lo = np.isclose(f0, lo, rtol=_TOL, atol=0)
    at_hi = np.isclose(f0, hi, rtol=_TOL, atol=0)
    mass_lo = math.log(float(_norm_cdf((lo - mean) / sd))) + _ATOM
    mass_hi = math.log(float(1 - _norm_cdf((hi - mean) / sd))) + _ATOM
    return np.where(inside, dens, np.where(at_lo, mass_lo, np.where(at_hi, mass_hi, -np.inf)))


def _mix(f0):
    """Reticulocyte share -> (m1, a, b): the whole-blood / mature-cell moment ratios of the
    generator (E[V] = M m1, E[V^2] = M^2 (a + b c^2))."""
    return (1 - f0) + 1.2 * f0, (1 - f0) + 1.44 * f0, (1 - f0) + 1.21 * 1.44 * f0


def _z_mcv(mm, g, m1, sex):
    """Mature MCV ``mm`` = mcv0 / m1 · g -> (z of the healthy MCV mcv0, log-likelihood of mm)."""
    mcv0 = mm * m1 / g
    z = (mcv0 - _MCV_MEAN[sex]) / _MCV_SD[sex]
    return z, _log_phi(z) - np.log(_MCV_SD[sex]) + np.log(m1 / g)


def _log_mchc(mchc, drop):
    """Mature MCHC = mchc0 − drop, mchc0 ~ N(33.8, 0.8²)."""
    mean, sd = _MCHC0
    return _log_phi((mchc + drop - mean) / sd) - math.log(sd)


def _log_rdw(c, add, f0, sex):
    """Mature-cell CV ``c`` (fraction) = whole-blood RDW0 turned into the mature CV, plus
    ``add`` (%), with RDW0 ~ N(RDW mean, SD) for the sex: log-likelihood of c."""
    m1, a, b = _mix(f0)
    c0 = (100 * c - add) / 100
    q = (c0 * c0 * b + a) / (m1 * m1) - 1
    ok = (c0 > 0) & (q > 0)
    q = np.where(ok, q, 1.0)
    rdw0 = 100 * np.sqrt(q)
    jac = c0 * b / (m1 * m1 * np.sqrt(q))  # d RDW0 / d (100 c)
    out = _log_phi((rdw0 - _RDW_MEAN[sex]) / _RDW_SD[sex]) - np.log(_RDW_SD[sex]) + np.log(np.abs(jac))
    return np.where(ok, out, -np.inf)


def _rbc(mult, z, sex):
    """RBC count given the latents: (mean, SD) = mult · (healthy mean given z, healthy SD | z)."""
    rho = _RHO[sex]
    return mult * (_RBC_MEAN[sex] + _RBC_SD[sex] * rho * z), mult * _RBC_SD[sex] * np.sqrt(1 - rho**2)


def _trapezoid(n: int) -> np.ndarray:
    w = np.full(n, 1.0 / (n - 1))
    w[[0, -1]] *= 0.5
    return w


def _prior(sex, age) -> np.ndarray:
    """P(condition | sex, age), (n, 7), as the generator draws it."""
    prev = PREVALENCE[:, sex].T.copy()
    factor = np.asarray(age, np.float64) / 54.0
    prev[:, 3] *= factor
    prev[:, 6] *= factor
    return prev / prev.sum(1, keepdims=True)


def _posterior(logw, mean, sd):
    """Atoms (n, G) with log weights -> posterior (E[m], E[sd²] + Var[m]) over the atoms."""
    logw = logw - logw.max(1, keepdims=True)
    w = np.exp(logw)
    w /= w.sum(1, keepdims=True)
    m = (w * mean).sum(1)
    var = (w * (sd * sd + (mean - m[:, None]) ** 2)).sum(1)
    return w, m, var


def cell_bound(pop: dict[str, np.ndarray], sex: np.ndarray, age: np.ndarray,
               hb_threshold: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior of the hematocrit and of anemia per patient, given the population only.

    ``pop``: the generator's component arrays ``w, M, C, cv, cc`` (n, 4); ``sex`` 0 = man,
    1 = woman; ``age`` in years; ``hb_threshold`` the WHO Hb cut (g/dL) per patient.
    Returns ``hematocrit`` (posterior mean), ``hematocrit_sd`` and ``anemia_probability``.
    """
    sex, age, hb_threshold = np.asarray(sex, np.int64), np.asarray(age), np.asarray(hb_threshold, np.float64)
    parts = [_cell_bound({k: np.asarray(v)[lo : lo + _BLOCK] for k, v in pop.items()}, sex[lo : lo + _BLOCK],
                         age[lo : lo + _BLOCK], hb_threshold[lo : lo + _BLOCK]) for lo in range(0, len(sex), _BLOCK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else \
        {k: np.zeros(0) for k in ("hematocrit", "hematocrit_sd", "anemia_probability")}


def _cell_bound(pop, sex, age, hb_threshold) -> dict[str, np.ndarray]:
    w, M, C, cv = (np.asarray(pop[k], np.float64) for k in ("w", "M", "C", "cv"))
    sex = np.asarray(sex, np.int64)
    n = len(sex)
    idx = mixture_indices(w, M, C, cv, np.asarray(pop["cc"], np.float64))
    mm, mchc, c = M[:, 0], C[:, 0], cv[:, 0]
    w1, w2, w3 = w[:, 1], w[:, 2], w[:, 3]
    ratio, abv, abc = M[:, 1] / mm, M[:, 2] / mm, C[:, 2] / C[:, 0]
    prior = _prior(sex, age)
    s = np.linspace(0.0, 1.0, GRID)[None, :]  # (1, G)
    log_ds = np.log(_trapezoid(GRID))[None, :]
    rbc_m = np.zeros(n)
    rbc_v = np.zeros(n)
    p_anemia = np.zeros(n)
    cut = 10 * hb_threshold / idx["mch"]  # anemia ⇔ RBC < cut

    def put(rows, logw, mean, sd):
        wts, m, v = _posterior(logw, mean, sd)
        rbc_m[rows], rbc_v[rows] = m, v
        p_anemia[rows] = (wts * _norm_cdf((cut[rows, None] - mean) / sd)).sum(1)

    transfusion = w3 > _TOL
    iron = ~transfusion & (w2 > _TOL) & np.isclose(abv, 0.80) & np.isclose(abc, 0.70)
    macro = ~transfusion & (w2 > _TOL) & np.isclose(abv, 0.55)
    hemolysis = ~transfusion & ~iron & ~macro & (ratio > 1.2 + _TOL)
    plain = ~(transfusion | iron | macro | hemolysis)

    for rows, s_of, rho_of, g_of, mult_of in (  # severity seen exactly
        (iron, lambda r: (w2[r] - 0.05) / 0.30, lambda sv: 0.8 - 0.4 * sv, lambda sv: 1 - 0.22 * sv,
         lambda sv: 1 - 0.18 * sv),
        (macro, lambda r: (w2[r] - 0.02) / 0.08, lambda sv: 0.5, lambda sv: 1.20 + 0.20 * sv,
         lambda sv: 0.85 - 0.45 * sv),
    ):
        r = np.flatnonzero(rows)
        sv = s_of(r)
        f0 = w1[r] / rho_of(sv)
        z, _ = _z_mcv(mm[r], g_of(sv), _mix(f0)[0], sex[r])
        mean, sd = _rbc(mult_of(sv), z, sex[r])
        put(r, np.zeros((len(r), 1)), mean[:, None], np.broadcast_to(sd, mean.shape)[:, None])

    r = np.flatnonzero(hemolysis)  # severity from the reticulocyte volume; healthy share unseen
    if len(r):
        sv = ((ratio[r] - 1.2) / 0.1)[:, None]
        mean0, sd0, lo, hi = _RETIC
        f0 = np.concatenate([[lo], np.linspace(lo, hi, GRID), [hi]])[None, :]  # atom, density, atom
        lp = np.concatenate([[math.log(float(_norm_cdf((lo - mean0) / sd0)))],
                             _log_phi((f0[0, 1:-1] - mean0) / sd0) - math.log(sd0) + np.log(_trapezoid(GRID) * (hi - lo)),
                             [math.log(float(1 - _norm_cdf((hi - mean0) / sd0)))]])
        sx = sex[r, None]
        z, lmm = _z_mcv(mm[r, None], 1.0, _mix(f0)[0], sx)
        logw = lp[None, :] + lmm + _log_rdw(c[r, None], 1 + 2 * sv, f0, sx)
        mean, sd = _rbc(1 - 0.35 * sv, z, sx)
        put(r, logw, mean, np.broadcast_to(sd, mean.shape))

    r = np.flatnonzero(transfusion)  # donor share seen; severity integrated
    if len(r):
        d = w3[r, None]
        f0 = w1[r, None] / (1 - d)
        sx = sex[r, None]
        z, lmm = _z_mcv(mm[r, None], 0.90 - 0.18 * s, _mix(f0)[0], sx)
        logw = log_ds + lmm + _log_mchc(mchc[r, None], 3.5 * s)
        mean, sd = _rbc(0.6 + 0.3 * d - 0.1 * s, z, sx)
        put(r, logw, mean, np.broadcast_to(sd, mean.shape))

    r = np.flatnonzero(plain)  # healthy | beta-thal trait | chronic disease, severity integrated
    if len(r):
        sx = sex[r, None]
        parts = []
        for k, sv, log_dk, rho, g, drop, add, mult in (
            (0, np.zeros((1, 1)), np.zeros((1, 1)), 1.0, 1.0, 0.0, 0.0, 1.0),
            (2, s, log_ds, 1.0, 0.84 - 0.12 * s, 1.8, 1.5 + s, 1.12 + 0.10 * s),
            (6, s, log_ds, 0.6, 1 - 0.10 * s, 1.5 * s, s, 1 - 0.28 * s),
        ):
            f0 = w1[r, None] / rho
            z, lmm = _z_mcv(mm[r, None], g, _mix(f0)[0], sx)
            logw = (np.log(prior[r, k])[:, None] + log_dk + _log_retic(f0) - math.log(rho) + lmm
                    + _log_mchc(mchc[r, None], drop) + _log_rdw(c[r, None], add, f0, sx))
            mean, sd = _rbc(mult * np.ones_like(sv), z, sx)
            shape = np.broadcast_shapes(logw.shape, mean.shape)
            parts.append([np.broadcast_to(a, shape) for a in (logw, mean, np.broadcast_to(sd, mean.shape))])
        logw, mean, sd = (np.concatenate([p[i] for p in parts], axis=1) for i in range(3))
        put(r, logw, mean, sd)

    scale = idx["mcv"] / 10
    return {"hematocrit": scale * rbc_m, "hematocrit_sd": scale * np.sqrt(rbc_v),
            "anemia_probability": np.clip(p_anemia, 0.0, 1.0)}


# --------------------------------------------------------------------------- a learned reference


def population_features(n_patients: int, seed: int) -> np.ndarray:
    """(n_patients, 22): each patient's exact population parameters (``w, M, C, cv, cc`` of
    the four components: what infinitely many cells reveal), then sex (1 = woman) and age;
    the patients of ``simulate_cohort(n_patients, any cells, seed=seed)`` in their order."""
    from flowrbc.simulate import simulate_cohort

    sim = simulate_cohort(n_patients, 1, seed=seed)  # patients do not depend on the cell count
    pop = [sim.populations[k] for k in ("w", "M", "C", "cv", "cc")]
    s = sim.samples
    return np.concatenate(pop + [(s["sex"] == "F").to_numpy(float)[:, None], s["age"].to_numpy(float)[:, None]], 1)


def exact_population_reference(samples, seed: int, fresh_samples, fresh_seed: int,
                               targets=("hematocrit", "anemia")) -> dict[str, np.ndarray]:
    """Predictions on the fresh patients of a model *given* each patient's exact population
    parameters: the moments baseline's gradient boosting on ``population_features``, fitted on
    the training split of the synthetic cohort ``samples`` (built-in, ``seed``), chosen on its
    validation split. What a predictor of the cells could learn from the same patients if
    every cell were measured: the room between it and the moments baseline is the room a set
    model can win at that training size (the bound above lies lower still: this model has to
    learn the mapping from the same few patients)."""
    from flowrbc.metrics import fit_moment_baseline

    F = population_features(len(samples), seed)
    split = samples["split"].astype(str).to_numpy()
    y = {t: samples[t].to_numpy(float) for t in targets if t in samples.columns}
    model = fit_moment_baseline(F, y, split == "train", split == "val", [f"population_{i}" for i in range(F.shape[1])])
    return model.predict(population_features(len(fresh_samples), fresh_seed))
