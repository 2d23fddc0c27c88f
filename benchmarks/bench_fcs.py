"""FCS read speed: ``read_fcs_data`` against bare ``flowio.FlowData`` + numpy reshape.

Writes 1,000,000-event files (8 channels: float32, and int16 / int32 integer variants)
into a temporary directory and reports events/s, the median of a few runs.

    python3 benchmarks/bench_fcs.py [--events 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowrbc.io.fcs import read_fcs_data, write_fcs_arrays  # noqa: E402

CHANNELS = 8


def _write_int(path: Path, values: np.ndarray, bits: int) -> None:
    """An integer FCS 3.1 file: little endian, $PnR = 2**bits, linear."""
    n, p = values.shape
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "I", "$MODE": "L", "$PAR": str(p), "$TOT": str(n),
          "$NEXTDATA": "0", "$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0",
          "$ENDSTEXT": "0"}
    for i in range(1, p + 1):
        kw.update({f"$P{i}N": f"C{i}", f"$P{i}B": str(bits), f"$P{i}E": "0,0",
                   f"$P{i}R": str(2**bits)})
    data = np.ascontiguousarray(values, dtype=f"<u{bits // 8}").tobytes()
    width = 12  # fixed-width offsets keep the TEXT length independent of their values

    def text(begin: int) -> bytes:
        k = dict(kw, **{"$BEGINDATA": str(begin).zfill(width),
                        "$ENDDATA": str(begin + len(data) - 1).zfill(width)})
        return ("/" + "".join(f"{a}/{b}/" for a, b in k.items())).encode()

    begin = 58 + len(text(0))
    t = text(begin)
    end = begin + len(data) - 1
    header = (b"FCS3.1    " + f"{58:>8d}{57 + len(t):>8d}".encode()
              + (f"{begin:>8d}{end:>8d}" if end <= 99_999_999 else f"{0:>8d}{0:>8d}").encode()
              + f"{0:>8d}{0:>8d}".encode())
    path.write_bytes(header + t + data)


def _time(fn, repeats: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import flowio  # in the `test` extra: pip install -e '.[test]'

    rng = np.random.default_rng(0)
    n = args.events
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        f32 = Path(tmp, "float32.fcs")
        write_fcs_arrays(f32, rng.normal(100, 20, size=(n, CHANNELS)).astype(np.float32),
                         [f"C{i}" for i in range(1, CHANNELS + 1)])
        files["float32"] = f32
        for bits in (16, 32):
            p = Path(tmp, f"int{bits}.fcs")
            _write_int(p, rng.integers(0, 2**min(bits, 20), size=(n, CHANNELS)), bits)
            files[f"int{bits}"] = p

        for kind, path in files.items():
            ours = read_fcs_data(path).events
            fd = flowio.FlowData(str(path))
            theirs = np.reshape(np.asarray(fd.events), (-1, fd.channel_count))
            assert np.array_equal(ours, theirs.astype(np.float32)), f"{kind}: readers disagree"

            def flowio_read(path=path):
                fd = flowio.FlowData(str(path))
                return np.reshape(np.asarray(fd.events, dtype=np.float32), (-1, fd.channel_count))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_ours = _time(lambda path=path: read_fcs_data(path), args.repeats)
                t_flowio = _time(flowio_read, args.repeats)
            size_mb = path.stat().st_size / 1e6
            rows.append((kind, size_mb, t_ours, t_flowio))

    print(f"FCS read, {n:,} events x {CHANNELS} channels, median of {args.repeats} runs")
    print(f"{'data':<8} {'MB':>6} {'flowrbc s':>10} {'Mev/s':>7} {'flowio s':>9} {'Mev/s':>7} {'speedup':>8}")
    for kind, mb, a, b in rows:
        print(f"{kind:<8} {mb:>6.1f} {a:>10.4f} {n / a / 1e6:>7.1f} {b:>9.4f} {n / b / 1e6:>7.1f} "
              f"{b / a:>7.1f}x")


if __name__ == "__main__":
    main()
