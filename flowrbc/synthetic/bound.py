r"""The best prediction the cells allow: the synthetic generator's Bayes bound.

Infinitely many cells of a patient reveal the patient's red-cell *population*
(``flowrbc.synthetic.record.Population``). They do not reveal the latents behind it: a
mature-cell MCV of 80 fL may be a healthy small MCV or a mild chronic disease of a larger one,
and the RBC count is never seen. The bound conditions on what the population reveals, plus
sex and age, and integrates over the rest:

    E[Hct | pop, sex, age] = MCV / 10 · E[RBC | pop, sex, age]
    Var[Hct | pop, sex, age] = (MCV / 10)^2 · (E[sd_RBC^2] + Var[E[RBC | latents]])

with ``RBC | latents ~ N(m(latents), sd(latents)^2)`` as the generator draws it. Its mean
squared error E[Var] is the lowest any predictor of the cells, sex and age can reach in
expectation (finite cells only add error); P(anemia | pop, sex, age) is the Bayes-optimal
probability, so its accuracy, Brier score and AUROC bound those of any classifier.

The bound reads each patient's :class:`~flowrbc.synthetic.record.PatientRecord` and every
coefficient from ``flowrbc.synthetic.physiology``, the table the generator drew from. Of the
record it reads only what the population shows:

* the population itself, sex and age;
* the condition up to its *look* (``look_alike_groups``): conditions whose populations have
  different shapes (which extra subpopulations exist, with their volume and CHC ratios;
  whether the reticulocyte share is set outright; whether the reticulocytes are enlarged)
  are told apart by the cells. Conditions of one look (healthy, beta-thalassemia trait,
  chronic disease) are not: they are integrated jointly with the severity, each weighed by its
  prior for the patient's sex and age and by how likely it makes the observed mature MCV,
  MCHC, RDW and reticulocyte share;
* the severity only where the look moves with it (``reveals_severity``: an abnormal share or
  a reticulocyte volume that grows with ``s``), since the population then gives ``s``
  exactly; elsewhere (transfusion) ``s`` is integrated. Where a condition sets the
  reticulocyte share outright (hemolysis), the healthy share behind it, which sets the
  mature-cell share of the MCV, is unseen and integrated over its clipped-normal prior.

The rules read the table's effects, never condition names or coefficient values, so a changed
coefficient moves the bound with the data; a table shape the rules cannot bound raises.

Each integral is a trapezoid rule on a fine grid. Clipping bounds of the generator that bind
with probability below 1e-3 (``physiology.Clips``) are not modelled; the clipped reticulocyte
share (an atom at each bound) is.
"""

from __future__ import annotations

import math

import numpy as np

from flowrbc.synthetic import physiology
from flowrbc.synthetic.physiology import Effect, Physiology
from flowrbc.synthetic.record import PatientRecord

GRID = 201  # grid points per integral: within 5e-4 (Hct) and 2e-5 (P) of a 1601-point grid
_BLOCK = 8192  # patients per pass: bounds the (patients, grid) temporaries
_ATOM = 1e4  # log-weight lift of a clipped (atomic) reticulocyte share over any density value
_TOL = 1e-6
_OUTPUTS = ("hematocrit", "hematocrit_sd", "anemia_probability")


def _log_phi(z):
    return -0.5 * z * z - 0.5 * math.log(2 * math.pi)


def _norm_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)


def _trapezoid(n: int) -> np.ndarray:
    w = np.full(n, 1.0 / (n - 1))
    w[[0, -1]] *= 0.5
    return w


# --------------------------------------------------------------------------- what the cells show


def reveals_severity(effect: Effect) -> bool:
    """Whether a population with this effect shows the severity exactly: an abnormal
    subpopulation whose share, or reticulocytes whose volume, grows with ``s``."""
    ab = effect.abnormal
    return (ab is not None and ab.share.slope != 0) or effect.retic_volume_shift.slope != 0


def _look(effect: Effect) -> tuple:
    """The shape of a population with this effect, whatever the severity."""
    ab = effect.abnormal
    shift = effect.retic_volume_shift
    return (None if ab is None else (ab.volume_ratio, ab.chc_ratio), effect.donor,
            effect.retic_share is not None, shift.at0 != 0 or shift.slope != 0)


def look_alike_groups(table: Physiology) -> list[tuple[int, ...]]:
    """Condition codes grouped by look: the cells tell groups apart, not the members of one.

    Raises ``NotImplementedError`` for what the integrals below do not cover: a group of
    several conditions that show their severity, or a condition that sets the reticulocyte
    share outright without showing its severity (two unseen latents at once)."""
    groups: dict[tuple, list[int]] = {}
    for code, condition in enumerate(table.conditions):
        groups.setdefault(_look(condition.effect), []).append(code)
    for codes in groups.values():
        effects = [table.conditions[k].effect for k in codes]
        names = [table.conditions[k].name for k in codes]
        if len(codes) > 1 and any(reveals_severity(e) for e in effects):
            raise NotImplementedError(f"conditions {names} look alike and show their severity")
        if any(e.retic_share is not None and not reveals_severity(e) for e in effects):
            raise NotImplementedError(f"{names}: a set reticulocyte share needs a severity the cells show")
    return [tuple(codes) for codes in groups.values()]


# --------------------------------------------------------------------------- likelihoods


def _mix(f0, t: Physiology):
    """Healthy reticulocyte share -> (m1, a, b): the whole-blood / mature-cell moment ratios
    of the generator (E[V] = M m1, E[V^2] = M^2 (a + b c^2))."""
    r, cv_sq = t.reticulocytes.volume_ratio, t.reticulocytes.volume_cv_ratio_sq
    return (1 - f0) + r * f0, (1 - f0) + r**2 * f0, (1 - f0) + cv_sq * r**2 * f0


def _z_mcv(mm, g, m1, sex, t: Physiology):
    """Mature MCV ``mm`` = mcv0 / m1 · g -> (z of the healthy MCV mcv0, log-likelihood of mm)."""
    mean, sd = np.asarray(t.reference.mcv_mean)[sex], np.asarray(t.reference.mcv_sd)[sex]
    z = (mm * m1 / g - mean) / sd
    return z, _log_phi(z) - np.log(sd) + np.log(m1 / g)


def _log_mchc(mchc, shift, t: Physiology):
    """Mature MCHC = mchc0 + ``shift``, mchc0 from the healthy baseline's normal."""
    d = t.baseline.mchc
    return _log_phi((mchc - shift - d.mean) / d.sd) - math.log(d.sd)


def _log_rdw(c, add, f0, sex, t: Physiology):
    """Mature-cell CV ``c`` (fraction) = whole-blood RDW0 turned into the mature CV, plus
    ``add`` (%), RDW0 from the sex's reference normal: log-likelihood of c."""
    mean, sd = np.asarray(t.reference.rdw_mean)[sex], np.asarray(t.reference.rdw_sd)[sex]
    m1, a, b = _mix(f0, t)
    c0 = (100 * c - add) / 100
    q = (c0 * c0 * b + a) / (m1 * m1) - 1
    ok = (c0 > 0) & (q > 0)
    q = np.where(ok, q, 1.0)
    rdw0 = 100 * np.sqrt(q)
    jac = c0 * b / (m1 * m1 * np.sqrt(q))  # d RDW0 / d (100 c)
    return np.where(ok, _log_phi((rdw0 - mean) / sd) - np.log(sd) + np.log(np.abs(jac)), -np.inf)


def _log_retic(f0, t: Physiology):
    """Log prior of the healthy reticulocyte share ``f0``: a clipped normal, so a density
    inside the clip bounds and an atom (lifted by ``_ATOM``) at each; -inf outside."""
    d = t.baseline.retic_share
    f0 = np.asarray(f0, np.float64)
    inside = (f0 > d.lo * (1 + _TOL)) & (f0 < d.hi * (1 - _TOL))
    dens = _log_phi((f0 - d.mean) / d.sd) - math.log(d.sd)
    at_lo = np.isclose(f0, d.lo, rtol=_TOL, atol=0)
    at_hi = np.isclose(f0, d.hi, rtol=_TOL, atol=0)
    mass_lo = math.log(float(_norm_cdf((d.lo - d.mean) / d.sd))) + _ATOM
    mass_hi = math.log(float(1 - _norm_cdf((d.hi - d.mean) / d.sd))) + _ATOM
    return np.where(inside, dens, np.where(at_lo, mass_lo, np.where(at_hi, mass_hi, -np.inf)))


def _retic_grid(t: Physiology):
    """The healthy reticulocyte share as atoms, (1, GRID + 2), with their log prior masses:
    the mass at each clip bound, and the trapezoid-weighted density between."""
    d = t.baseline.retic_share
    f0 = np.concatenate([[d.lo], np.linspace(d.lo, d.hi, GRID), [d.hi]])
    inner = _log_phi((f0[1:-1] - d.mean) / d.sd) - math.log(d.sd) + np.log(_trapezoid(GRID) * (d.hi - d.lo))
    lp = np.concatenate([[math.log(float(_norm_cdf((d.lo - d.mean) / d.sd)))], inner,
                         [math.log(float(1 - _norm_cdf((d.hi - d.mean) / d.sd)))]])
    return f0[None, :], lp[None, :]


def _rbc(mult, z, sex, t: Physiology):
    """RBC count given the latents: (mean, SD) = mult · (healthy mean given z, healthy SD | z)."""
    ref = t.reference
    rho = ref.rbc_mcv_correlation()[sex]
    mean, sd = np.asarray(ref.rbc_mean)[sex], np.asarray(ref.rbc_sd)[sex]
    return mult * (mean + sd * rho * z), mult * sd * np.sqrt(1 - rho**2)


# --------------------------------------------------------------------------- posteriors


def _severity_seen(e: Effect, s, o: dict, t: Physiology):
    """One condition, its severity ``s`` (n, 1) shown by the population -> atoms (logw, mean,
    sd), (n, 1), or (n, GRID + 2) where the healthy reticulocyte share is unseen."""
    mult = e.rbc(s, o["d"])
    if e.retic_share is None:  # the healthy share is seen: one atom
        f0 = o["w1"] / ((1 - o["d"]) * e.retic_scale(s))
        z, _ = _z_mcv(o["mm"], e.mcv_scale(s), _mix(f0, t)[0], o["sex"], t)
        mean, sd = _rbc(mult, z, o["sex"], t)
        return np.zeros_like(mean), mean, sd
    f0, log_prior = _retic_grid(t)  # (1, G + 2)
    z, lmm = _z_mcv(o["mm"], e.mcv_scale(s), _mix(f0, t)[0], o["sex"], t)
    logw = log_prior + lmm + _log_rdw(o["c"], e.rdw_shift(s), f0, o["sex"], t)
    mean, sd = _rbc(mult, z, o["sex"], t)
    return logw, mean, np.broadcast_to(sd, mean.shape)


def _severity_integrated(codes, prior, o: dict, t: Physiology):
    """Conditions ``codes`` of one look, each with its severity on a grid -> atoms (logw, mean,
    sd), (n, sum of grid sizes); ``prior`` (n, K) = P(condition | sex, age)."""
    s_grid = np.linspace(0.0, 1.0, GRID)[None, :]  # (1, G)
    log_ds = np.log(_trapezoid(GRID))[None, :]
    parts = []
    for k in codes:
        condition = t.conditions[k]
        e = condition.effect
        s, log_dk = (s_grid, log_ds) if condition.graded else (np.zeros((1, 1)), np.zeros((1, 1)))
        scale = e.retic_scale(s)
        f0 = o["w1"] / ((1 - o["d"]) * scale)  # the healthy share this hypothesis implies
        z, lmm = _z_mcv(o["mm"], e.mcv_scale(s), _mix(f0, t)[0], o["sex"], t)
        logw = (np.log(prior[:, k])[:, None] + log_dk + _log_retic(f0, t) - np.log(scale) + lmm
                + _log_mchc(o["mchc"], e.mchc_shift(s), t) + _log_rdw(o["c"], e.rdw_shift(s), f0, o["sex"], t))
        mean, sd = _rbc(e.rbc(s, o["d"]) * np.ones_like(s), z, o["sex"], t)
        shape = np.broadcast_shapes(logw.shape, mean.shape)
        parts.append([np.broadcast_to(a, shape) for a in (logw, mean, np.broadcast_to(sd, mean.shape))])
    return tuple(np.concatenate([p[i] for p in parts], axis=1) for i in range(3))


def _posterior(logw, mean, sd):
    """Atoms (n, G) with log weights -> (weights, E[m], E[sd²] + Var[m]) over the atoms."""
    logw = logw - logw.max(1, keepdims=True)
    w = np.exp(logw)
    w /= w.sum(1, keepdims=True)
    m = (w * mean).sum(1)
    var = (w * (sd * sd + (mean - m[:, None]) ** 2)).sum(1)
    return w, m, var


def cell_bound(record: PatientRecord, table: Physiology | None = None) -> dict[str, np.ndarray]:
    """Posterior of the hematocrit and of anemia per patient, given the population only.

    ``record``: the generator's record of the patients; ``table`` the physiology it was drawn
    from (default ``physiology.TABLE``). Returns (n,) arrays ``hematocrit`` (posterior mean),
    ``hematocrit_sd`` and ``anemia_probability``.
    """
    t = physiology.TABLE if table is None else table
    if tuple(record.conditions) != t.names:
        raise ValueError(f"the record's conditions {record.conditions} are not the table's {t.names}")
    groups = look_alike_groups(t)
    parts = [_bound_block(record.take(slice(lo, lo + _BLOCK)), t, groups) for lo in range(0, len(record), _BLOCK)]
    if not parts:
        return {k: np.zeros(0) for k in _OUTPUTS}
    return {k: np.concatenate([p[k] for p in parts]) for k in _OUTPUTS}


def _bound_block(rec: PatientRecord, t: Physiology, groups) -> dict[str, np.ndarray]:
    pop = rec.population
    idx = pop.indices()
    n = len(rec)
    cut = 10 * np.asarray(t.who_hb_threshold)[rec.sex] / idx["mch"]  # anemia ⇔ RBC < cut
    prior = t.prior(rec.sex, rec.age)  # (n, K)
    rbc_m, rbc_v, p_anemia = np.zeros(n), np.zeros(n), np.zeros(n)
    for codes in groups:
        r = np.flatnonzero(np.isin(rec.condition, codes))
        if not len(r):
            continue
        o = dict(w1=pop.retic_share[r, None], d=pop.donor_share[r, None], mm=pop.mature_mcv[r, None],
                 mchc=pop.mature_mchc[r, None], c=pop.mature_cv[r, None], sex=rec.sex[r, None])  # (n_r, 1)
        effect = t.conditions[codes[0]].effect
        if reveals_severity(effect):
            logw, mean, sd = _severity_seen(effect, rec.severity[r, None], o, t)
        else:
            logw, mean, sd = _severity_integrated(codes, prior[r], o, t)
        wts, rbc_m[r], rbc_v[r] = _posterior(logw, mean, sd)
        p_anemia[r] = (wts * _norm_cdf((cut[r, None] - mean) / sd)).sum(1)
    scale = idx["mcv"] / 10
    return {"hematocrit": scale * rbc_m, "hematocrit_sd": scale * np.sqrt(rbc_v),
            "anemia_probability": np.clip(p_anemia, 0.0, 1.0)}


# --------------------------------------------------------------------------- cohort figures


def bound_summary(record: PatientRecord, samples, table: Physiology | None = None) -> dict[str, float]:
    """Cohort-level figures of the cell bound (``bound_*``, from the ``bound_*`` columns of
    ``samples``) and, for contrast, of the latent oracle (``latent_*``), which also knows the
    latents the cells do not reveal (a disease's severity where the population shows it only
    combined with the patient's healthy MCV): no predictor of the cells can reach the latter.

    Bound MSE = mean posterior variance (its expected value), ``_realized`` = the error of the
    posterior mean on these patients; anemia accuracy = mean of max(P, 1 − P).
    """
    t = physiology.TABLE if table is None else table
    idx = record.population.indices()
    threshold = np.asarray(t.who_hb_threshold)[record.sex]
    p = samples["bound_anemia_probability"].to_numpy()
    err = samples["hematocrit"].to_numpy() - samples["bound_hematocrit"].to_numpy()
    latent_sd = record.rbc_sd * idx["mcv"] / 10
    hb_sd = record.rbc_sd * idx["mch"] / 10
    p_latent = _norm_cdf((threshold - record.rbc_mean * idx["mch"] / 10) / hb_sd)
    return {
        "bound_hematocrit_mse": float(np.mean(samples["bound_hematocrit_sd"].to_numpy() ** 2)),
        "bound_hematocrit_mse_realized": float(np.mean(err**2)),
        "bound_hematocrit_mae_realized": float(np.mean(np.abs(err))),
        "bound_anemia_accuracy": float(np.mean(np.maximum(p, 1 - p))),
        "bound_anemia_accuracy_realized": float(np.mean((p > 0.5) == samples["anemia"].to_numpy())),
        "latent_hematocrit_mse": float(np.mean(latent_sd**2)),
        "latent_anemia_accuracy": float(np.mean(np.maximum(p_latent, 1 - p_latent))),
    }
