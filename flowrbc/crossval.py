"""Cross-validation on a cohort that has no fresh patients: every patient predicted once by a
predictor that never saw them, and the model − baseline difference paired over all of them.

``flowrbc train cohort.h5ad --folds K [--repeats R] [--group COLUMN]``:

1. ``assign_folds`` deals the samples into K folds, stratified by the anemia label where the
   cohort has one; the samples of one ``group`` (a patient measured several times) share a fold;
2. per fold, ``split_column`` marks the held-out fold ``test``, a stratified ~15 % of the rest
   ``val`` (groups kept whole) and the rest ``train``, and ``flowrbc.train.train_cohort`` runs on
   a copy of the cohort with that ``split`` column: scaler, set model, index members, blend,
   calibration and the moments baseline are all refitted on the other folds, and the held-out
   fold is predicted once (``flowrbc.assess.sample_predictions``);
3. the held-out predictions of every fold make ``oof.csv``, from which ``flowrbc.crossval_stats``
   computes the paired statistics, per fold and over all patients;
4. the model a user keeps: one more training on every patient (``train``/``val``, no ``test``)
   with the same settings, saved as ``<run>/model.pt``; its ``metrics.json`` and its checkpoint's
   metrics carry the cross-validated figures (``crossval``), since it has no test split of its own.

Layout: ``<run>/folds/plan.json`` (the options, checked by ``resume``), ``<run>/folds/r<R>-f<K>/``
(each fold's run and its ``predictions.csv``, written last: a fold is done when it exists),
``<run>/oof.csv``, and the kept model's run in ``<run>/`` itself. ``resume`` continues the fold
that was cut and redoes none that finished; the statistics are read back from the files in
either case, so a resumed run reports exactly what an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowrbc.errors import FlowrbcError

VAL_FRACTION = 0.15  # of each fold's training part, as the built-in cohort's 300 of 2,000
STRATIFY = "anemia"  # the label folds are balanced on, where the sample table has it
SOURCE = ("cross-validation: out-of-fold predictions of models trained on the other folds; "
          "the kept model is trained on every patient with the same settings")


@dataclass
class CrossvalResult:
    run_dir: Path  # the kept model's run: model.pt, metrics.json (with "crossval"), oof.csv, folds/
    summary: dict[str, Any]  # the "crossval" block (``flowrbc.crossval_stats.summarise``)
    metrics: dict[str, Any]  # the kept model's metrics.json


# ----------------------------------------------------------------------------- folds


def _units(samples, idx: np.ndarray, group: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``idx`` as units dealt together -> (unit of each sample (len(idx),), each unit's
    stratum label (U,), each unit's size (U,)). A unit is a group (its most frequent label;
    a missing group value is a unit of its own), or each sample without ``group``."""
    if group is None:
        unit = np.arange(len(idx))
    else:
        keys = samples[group].to_numpy(dtype=object)[idx]
        keys = np.array([f"#{i}" if _missing(k) else f"={k}" for i, k in enumerate(keys)], dtype=object)
        _, unit = np.unique(keys, return_inverse=True)
    if STRATIFY in samples.columns:
        labels = np.array(["?" if _missing(v) else str(bool(v)) for v in samples[STRATIFY].to_numpy(dtype=object)[idx]])
    else:
        labels = np.full(len(idx), "")
    n_units = int(unit.max()) + 1 if len(unit) else 0
    names, code = np.unique(labels, return_inverse=True)
    counts = np.zeros((n_units, len(names)), dtype=np.int64)
    np.add.at(counts, (unit, code), 1)
    stratum = names[np.argmax(counts, axis=1)] if len(names) else np.array([], dtype=str)
    return unit, stratum.astype(str), np.bincount(unit, minlength=n_units)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v) in ("", "nan", "NaN", "<NA>", "None")


def _usable(cohort) -> np.ndarray:
    return np.flatnonzero(np.diff(cohort.offsets) > 0)


def assign_folds(cohort, folds: int, seed: int = 0, *, group: str | None = None) -> np.ndarray:
    """Each sample's fold (0 … ``folds`` − 1; −1 for a sample without cells): units (groups, or
    samples) in a random order, stratum by stratum, the largest first, each to the fold with the
    fewest of that stratum, then the fewest samples. Deterministic in ``seed``."""
    if folds < 2:
        raise FlowrbcError(f"--folds {folds}: at least 2")
    if group is not None and group not in cohort.samples.columns:
        raise FlowrbcError(f"--group {group}: the cohort's sample table has no {group!r} column")
    idx = _usable(cohort)
    unit, stratum, size = _units(cohort.samples, idx, group)
    if len(size) < folds:
        what = f"groups ({group})" if group else "samples with cells"
        raise FlowrbcError(f"--folds {folds}: the cohort has only {len(size)} {what}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC5,)))
    position = rng.permutation(len(size))
    order = np.lexsort((position, -size, stratum))  # by stratum, then larger units first, then at random
    names = sorted(set(stratum))
    per_stratum = np.zeros((len(names), folds), dtype=np.int64)
    total = np.zeros(folds, dtype=np.int64)
    fold_of_unit = np.empty(len(size), dtype=np.int64)
    for u in order:
        s = names.index(stratum[u])
        f = min(range(folds), key=lambda k: (per_stratum[s, k], total[k], k))
        fold_of_unit[u] = f
        per_stratum[s, f] += size[u]
        total[f] += size[u]
    out = np.full(cohort.n_samples, -1, dtype=np.int64)
    out[idx] = fold_of_unit[unit]
    return out


def split_column(cohort, fold_of: np.ndarray, fold: int | None, seed: int = 0, *,
                 group: str | None = None, val_fraction: float = VAL_FRACTION) -> np.ndarray:
    """The ``split`` column of one fold's training: fold ``fold`` ``test`` (None: no test, every
    sample trains), about ``val_fraction`` of each stratum of the rest ``val`` (whole groups, at
    least one), the rest ``train``. Samples without cells read ``train`` (training skips them)."""
    out = np.full(cohort.n_samples, "train", dtype=object)
    if fold is not None:
        out[fold_of == fold] = "test"
    rest = np.flatnonzero((fold_of >= 0) & (out == "train"))
    unit, stratum, size = _units(cohort.samples, rest, group)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x7A1, 0 if fold is None else fold + 1)))
    position = rng.permutation(len(size))
    val_units = []
    for s in sorted(set(stratum)):
        members = [u for u in np.argsort(position) if stratum[u] == s]
        want, taken = round(val_fraction * size[members].sum()), 0
        for u in members:
            if taken >= want:
                break
            val_units.append(u)
            taken += size[u]
    if not val_units and len(size) > 1:
        val_units = [int(np.argmin(position))]
    out[rest[np.isin(unit, val_units)]] = "val"
    return out


# ----------------------------------------------------------------------------- the loop


def crossval_cohort(cohort, config, run_dir, *, folds: int, repeats: int = 1, group: str | None = None,
                    resume: bool = False, fresh=None, reference=None,
                    progress_for: Callable[[str], Callable | None] | None = None,
                    on_epoch_end: Callable[[str, Any], None] | None = None,
                    log: Callable[[str], None] | None = None, plots: bool = True) -> CrossvalResult:
    """Cross-validate ``config`` (``flowrbc.train.TrainConfig``) on ``cohort`` in ``folds`` folds,
    ``repeats`` times with other splits, then train the kept model on every patient (see the
    module docstring). ``fresh``/``reference``: scored on the kept model only, as
    ``train_cohort`` does. ``progress_for(part)`` gives each training's progress callback and
    ``on_epoch_end(part, state)`` is called after each epoch, ``part`` being ``"r0-f2"`` or
    ``"all"``."""
    from flowrbc.checkpoint import atomic_write_text
    from flowrbc.crossval_stats import concat, fold_rows, plain, read_csv, summarise, to_csv
    from flowrbc.prepare import data_fingerprint

    if repeats < 1:
        raise FlowrbcError(f"--repeats {repeats}: at least 1")
    config.check()
    say = log or (lambda msg: None)
    run_dir = Path(run_dir)
    plan = {"folds": folds, "repeats": repeats, "group": group, "val_fraction": VAL_FRACTION,
            "stratify": STRATIFY if STRATIFY in cohort.samples.columns else None,
            "fingerprint": data_fingerprint(cohort), "train_config": config.to_dict()}
    _check_plan(run_dir, plan, resume)
    assignments = [assign_folds(cohort, folds, config.seed + r, group=group) for r in range(repeats)]
    atomic_write_text(run_dir / "folds" / "plan.json", json.dumps(plan, indent=2) + "\n")

    walls: dict[str, dict] = {}
    files = []
    for r, fold_of in enumerate(assignments):
        for k in range(folds):
            part = f"r{r}-f{k}"
            fold_dir = run_dir / "folds" / part
            files.append(fold_dir / "predictions.csv")
            if not (resume and files[-1].is_file()):
                split = split_column(cohort, fold_of, k, config.seed + r, group=group)
                say(f"repeat {r + 1} of {repeats}, fold {k + 1} of {folds}: " + _counts(split, fold_of))
                result = _train_part(cohort, split, config, fold_dir, part, resume, progress_for, on_epoch_end,
                                     say, plots=False)
                atomic_write_text(files[-1], to_csv(fold_rows(result.samples, cohort, r, k)))
            walls[part] = _walls(fold_dir)

    split = split_column(cohort, assignments[0], None, config.seed, group=group)
    done = resume and _has_crossval(run_dir / "metrics.json")
    if not done:
        say(f"the kept model, on every patient: {_counts(split, assignments[0])}")
        _train_part(cohort, split, config, run_dir, "all", resume, progress_for, on_epoch_end, say, plots,
                    fresh=fresh, reference=reference)
    walls["all"] = _walls(run_dir)

    rows = concat([read_csv(f) for f in files], list(cohort.samples.index.astype(str)))
    atomic_write_text(run_dir / "oof.csv", to_csv(rows))
    summary = plain(dict(summarise(rows, folds, repeats), group=group, stratify=plan["stratify"], seed=config.seed,
                         val_fraction=VAL_FRACTION, fingerprint=plan["fingerprint"], source=SOURCE,
                         wall_time_s=walls))
    metrics = _attach(run_dir, summary)
    return CrossvalResult(run_dir, summary, metrics)


def _counts(split: np.ndarray, fold_of: np.ndarray) -> str:
    used = fold_of >= 0
    return ", ".join(f"{s} {int(((split == s) & used).sum())}" for s in ("train", "val", "test")
                     if ((split == s) & used).any()) + " samples"


def _check_plan(run_dir: Path, plan: dict, resume: bool) -> None:
    path = run_dir / "folds" / "plan.json"
    if not resume:
        return
    if not path.is_file():
        raise FlowrbcError(f"--resume {run_dir}: no cross-validation run here (was it started with this --out?)")
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != plan["fingerprint"]:
        raise FlowrbcError(f"--resume {run_dir}: the cohort differs from the one the run started on")
    diff = [k for k in plan if k not in ("fingerprint", "train_config") and saved.get(k) != plan[k]]
    diff += [k for k, v in plan["train_config"].items() if saved.get("train_config", {}).get(k) != v]
    if diff:
        raise FlowrbcError(f"--resume {run_dir}: options differ from the interrupted run ({', '.join(diff)})")


def _train_part(cohort, split, config, out_dir: Path, part: str, resume: bool, progress_for, on_epoch_end, say,
                plots: bool, fresh=None, reference=None):
    """``train_cohort`` on a copy of ``cohort`` with the ``split`` column of this part; an
    interruption names the cross-validation run to resume."""
    from flowrbc.train import TrainingInterrupted, train_cohort

    samples = cohort.samples.copy()
    samples["split"] = split
    part_cohort = dataclasses.replace(cohort, samples=samples)
    hook = None if on_epoch_end is None else (lambda state: on_epoch_end(part, state))
    try:
        return train_cohort(part_cohort, dataclasses.replace(config), out_dir,
                            resume=resume and (out_dir / "last.pt").is_file(),
                            progress=progress_for(part) if progress_for else None, on_epoch_end=hook, log=say,
                            plots=plots, fresh=fresh, reference=reference)
    except TrainingInterrupted:
        run = out_dir if part == "all" else out_dir.parent.parent
        raise TrainingInterrupted(f"interrupted in {part}: continue with `flowrbc train ... --folds ... "
                                  f"--out {run} --resume` (finished folds are kept)") from None


def _walls(run_dir: Path) -> dict[str, float]:
    """A training's wall time and the part of it its epochs took (from its metrics.json)."""
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"total": float(m.get("wall_time_s", float("nan"))),
            "epochs": float(sum(h.get("time_s", 0.0) for h in m.get("history", [])))}


def _has_crossval(path: Path) -> bool:
    try:
        return "crossval" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _attach(run_dir: Path, summary: dict) -> dict:
    """Write the cross-validated figures into the kept model's metrics.json and checkpoint."""
    from flowrbc.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(source=SOURCE, crossval=summary)
    payload = load_checkpoint(run_dir / "model.pt")
    payload["metrics"] = {"source": SOURCE, "crossval": summary}
    save_checkpoint(run_dir / "model.pt", payload)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------- reading it back


def crossval_block(predictor, cohort=None) -> dict | None:
    """The cross-validated figures of a predictor's run: its checkpoint's, else those in the
    ``metrics.json`` beside it; None for a model trained without ``--folds``. With ``cohort``,
    ``in_sample`` says whether it is the cohort the model was trained on (every sample of it)."""
    from flowrbc.prepare import data_fingerprint

    block = (predictor.meta.get("metrics") or {}).get("crossval")
    if block is None and predictor.path is not None:
        path = Path(predictor.path).parent / "metrics.json"
        try:
            block = json.loads(path.read_text()).get("crossval")
        except (OSError, ValueError, AttributeError):
            block = None
    if not isinstance(block, dict):
        return None
    return block if cohort is None else dict(block, in_sample=block.get("fingerprint") == data_fingerprint(cohort))
