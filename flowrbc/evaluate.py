"""A checkpoint scored on a cohort's split (``flowrbc evaluate``): the predictor of the
checkpoint (``flowrbc.predictor``) and the scores of training's finishing step
(``flowrbc.assess.score``), so that the two agree on the same model and split."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from flowrbc.errors import FlowrbcError

SPLITS = ("train", "val", "test", "all")


def select_samples(cohort, split: str) -> np.ndarray:
    """Indices of the samples with cells in ``split`` ("all": every split)."""
    if split not in SPLITS:
        raise FlowrbcError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    usable = np.diff(cohort.offsets) > 0
    if split != "all":
        if "split" not in cohort.samples.columns:
            raise FlowrbcError(f"cohort {cohort.source}: no 'split' column; use --split all")
        usable &= cohort.samples["split"].astype(str).to_numpy() == split
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise FlowrbcError(f"cohort {cohort.source}: no sample with cells in the {split} split")
    return idx


def evaluate_cohort(model_path: str | os.PathLike, cohort, *, split: str = "test", seed: int = 0,
                    per_sample: bool = False) -> dict[str, Any]:
    """Metrics of the checkpoint's predictor on ``split`` of ``cohort``, with their SEs:
    ``{"model", "split", "n", "metrics": {target: {metric: value}}}``; ``per_sample`` adds
    ``"samples"`` (ids) and ``"predictions"`` ({target: calibrated values}) in that order. A model
    kept by cross-validation adds ``"crossval"`` (``flowrbc.crossval``), with ``in_sample`` True
    when ``cohort`` is the one it was trained on (every sample of it)."""
    from flowrbc.assess import score
    from flowrbc.crossval import crossval_block
    from flowrbc.predictor import Predictor

    predictor = Predictor.load(model_path)
    idx = select_samples(cohort, split)
    raw, _ = predictor.predict(predictor.prepare_cohort(cohort, idx), seed=seed)
    truth = {name: (cohort.samples[name].to_numpy(dtype=np.float64, na_value=np.nan)[idx]
                    if name in cohort.samples.columns else np.full(len(idx), np.nan)) for name in predictor.targets}
    scores, _ = score(predictor, raw, truth)
    metrics = {t: {k: (v if math.isfinite(v) else None) for k, v in m.items()} for t, m in scores["model"].items()}
    out = {"model": str(model_path), "split": split, "n": int(len(idx)), "metrics": metrics}
    cv = crossval_block(predictor, cohort)
    if cv is not None:  # the kept model of `flowrbc train --folds`: its out-of-sample figures
        out["crossval"] = cv
    if per_sample:
        out["samples"] = [str(s) for s in cohort.samples.index[idx]]
        out["predictions"] = {k: v.tolist() for k, v in predictor.calibrated(raw).items()}
    return out
