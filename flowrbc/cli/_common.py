"""Shared CLI pieces: consoles, the one error helper, shared options and progress columns.

Only typer and rich are imported here; commands import the library inside their bodies so
that ``flowrbc --help`` and ``flowrbc predict`` do not pay for unrelated heavy imports.
"""

from __future__ import annotations

import contextlib
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line naming the bad input and exit non-zero (no traceback)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn flowrbc's input errors (and unreadable files) into ``fail`` calls."""
    from flowrbc.errors import FlowrbcError

    try:
        yield
    except FlowrbcError as exc:
        fail(str(exc))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        fail(f"{exc.filename}: {exc.strerror}")
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def progress(transient: bool = False) -> Progress:
    """The progress bar every long command uses (rendered on stderr)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=transient,
    )


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to compute: auto picks CUDA when present.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output path.")]
ChannelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--channel",
        help="Map a role to a channel, e.g. --channel volume=FSC-A --channel hemoglobin=SSC-A.",
    ),
]


DatasetOpt = Annotated[
    int,
    typer.Option(
        "--dataset", min=0,
        help="Which data set of a file holding several to read (0 = the first); `flowrbc info` lists them.",
    ),
]


ScaleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--scale",
        help="Multiply a role's channel by FACTOR to bring instrument units to fL / pg, e.g. "
        "--scale volume=0.09 (repeatable). Nothing is rescaled unless asked.",
    ),
]

SexOpt = Annotated[str | None, typer.Option("--sex", help="M or F, for every file (default: the file's SEX "
                                            "keyword, else unknown).")]
AgeOpt = Annotated[float | None, typer.Option("--age", help="Age in years, for every file (default: the file's "
                                              "AGE keyword, else unknown).")]


def covariate_values(sex: str | None, age: float | None) -> dict:
    """--sex / --age checked -> the covariates a predictor is given (None: from the file)."""
    if sex is not None and sex.strip().upper() not in ("M", "F"):
        fail(f"--sex {sex!r}: use M or F")
    if age is not None and not 0 <= age <= 150:
        fail(f"--age {age:g}: not an age in years")
    return {"sex": sex.strip().upper() if sex else None, "age": age}


def parse_scale_map(items: list[str] | None) -> dict[str, float]:
    """``["volume=0.09", ...]`` -> ``{"volume": 0.09, ...}``; a malformed item or a factor
    that is not a positive number fails (unknown roles are refused by the library)."""
    out: dict[str, float] = {}
    for item in items or []:
        role, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not sep or not role.strip() or not (math.isfinite(factor) and factor > 0):
            fail(f"--scale {item!r}: expected ROLE=FACTOR with a positive FACTOR, e.g. volume=0.09")
        out[role.strip().lower()] = factor
    return out


def parse_channel_map(items: list[str] | None) -> dict[str, str]:
    """``["volume=FSC-A", ...]`` -> ``{"volume": "FSC-A", ...}``; a malformed item fails."""
    out: dict[str, str] = {}
    for item in items or []:
        role, sep, name = item.partition("=")
        if not sep or not role.strip() or not name.strip():
            fail(f"--channel {item!r}: expected ROLE=CHANNEL, e.g. volume=FSC-A")
        out[role.strip().lower()] = name.strip()
    return out
