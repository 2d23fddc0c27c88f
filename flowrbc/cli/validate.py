"""``flowrbc validate``: the papers' benchmark tasks as validation suites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrbc.cli._app import app
from flowrbc.cli._common import DeviceOpt, Format, FormatOpt, SeedOpt, console, fail, progress, user_errors

TASK_HELP = (
    "Tasks to run (default: all): normal-var, digits-var, point-cloud, set-anomaly, hematocrit, "
    "anemia, image-reconstruction, centroids, mbc-consistency."
)


@app.command("validate")
def validate(
    tasks: Annotated[Optional[list[str]], typer.Argument(help=TASK_HELP, show_default=False)] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick/--full", help="quick: small runs (≤ 3 min a task on a 2-core CPU); full: the papers' sizes (GPU)."),
    ] = True,
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", help="Only these model families or labels (repeatable), e.g. --model deepsets++."),
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", help="Real datasets: MNIST idx files, ModelNet40 HDF5, CelebA, Flow-RBC HDF5 (or sub-folders mnist/, modelnet40/, celeba/, flowrbc/)."),
    ] = None,
    fmt: FormatOpt = Format.table,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write validate.json into this folder.")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    size: Annotated[Optional[str], typer.Option("--size", hidden=True, help="toy|quick|full (overrides --quick/--full).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: 1 for quick runs).")] = None,
) -> None:
    """Run the papers' benchmark tasks: model × norm × residual × depth → metric, with the
    trivial baseline and, where the protocol matches, the paper's figure."""
    from flowrbc.validate import Context, render_tables, run_task, task_names, write_results

    chosen = list(tasks or task_names())
    unknown = [t for t in chosen if t not in task_names()]
    if unknown:
        fail(f"unknown task {unknown[0]!r}; choose from {', '.join(task_names())}")
    size = size or ("quick" if quick else "full")
    if size not in ("toy", "quick", "full"):
        fail(f"--size {size!r}: expected toy, quick or full")
    if fmt is Format.csv:
        fail("--format csv: validate writes table or json")
    results = []
    with user_errors(), progress() as bar:
        for name in chosen:
            task_id = bar.add_task(name, total=1000, status="")

            def report(fraction: float, status: str, task_id=task_id) -> None:
                bar.update(task_id, completed=int(1000 * fraction), status=status)

            ctx = Context(
                size=size,
                seed=seed,
                device=getattr(device, "value", device),
                data_dir=data_dir,
                families=tuple(model or ()),
                report=report,
                threads=threads,
            )
            results.append(run_task(name, ctx))
            bar.update(task_id, completed=1000, status=f"{results[-1].wall_s:.0f} s")
    if out is not None:
        with user_errors():
            path = write_results(results, out)
        console.print(f"results written to {path}", highlight=False) if fmt is Format.table else None
    if fmt is Format.json:
        import json

        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    # Piped output has no terminal width: give the wide tables room instead of 80 columns.
    before = console.width
    if not console.is_terminal:
        console.width = max(before, 200)
    try:
        for table in render_tables(results):
            console.print(table)
            console.print()
    finally:
        console.width = before
