"""Integer parameters whose $PnB is not a whole number of bytes, and files of several data sets
of which one is unreadable."""

from __future__ import annotations

import numpy as np
import pytest

from tests.io.fcs_builders import (
    base_keywords, build_fcs, channel_keywords, fails, fc500_like, float_file, int_file, pack_ints, read, write,
)


def _words(n: int = 50, seed: int = 0) -> np.ndarray:
    """(n, 3) 16-bit words with every bit in use: what the file stores, high bits and all."""
    return np.random.default_rng(seed).integers(0, 1 << 16, (n, 3))


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("bits", [10, 12])
def test_narrow_integers_in_16_bit_words_are_masked_to_their_bits(tmp_path, order, bits):
    words = _words()
    odd = {"$P1B": str(bits), "$P3B": str(bits)}  # P2 is a 16-bit parameter beside them
    path = write(tmp_path, "w.fcs", int_file(words, [16] * 3, [1 << 16] * 3, order=order, extra=odd, version="2.0"))
    d = read(path)
    mask = (1 << bits) - 1
    np.testing.assert_array_equal(d.events, np.column_stack([words[:, 0] & mask, words[:, 1], words[:, 2] & mask]))
    assert [m["bits"] for m in d.channel_meta] == [bits, 16, bits] and d.warnings == []


def test_range_narrower_than_the_bits_masks_further_and_wider_does_not_widen(tmp_path):
    words = _words()
    extra = {"$P1B": "10", "$P2B": "10", "$P3B": "10"}
    path = write(tmp_path, "r.fcs", int_file(words, [16] * 3, [256, 1024, 65536], extra=extra))
    np.testing.assert_array_equal(read(path).events, words & [255, 1023, 1023])


def test_the_length_tells_the_word_size(tmp_path):
    """20-bit values: 24-bit words would give 3 bytes an event; the DATA holds 4, so 32-bit words."""
    values = np.array([[(7 << 20) | 1048575, 1], [5, (1 << 31) | 99]])
    path = write(tmp_path, "w32.fcs", int_file(values, [32, 32], [1 << 20] * 2, extra={"$P1B": "20", "$P2B": "20"}))
    np.testing.assert_array_equal(read(path).events, [[1048575, 1], [5, 99]])


def test_bit_packed_data_and_a_length_that_fits_nothing_are_refused(tmp_path):
    kw = base_keywords(8, "I", "1,2", par=3, **channel_keywords("ABC", [10, 10, 12], [1024, 1024, 4096]))
    packed = write(tmp_path, "packed.fcs", build_fcs(kw, b"\x5a" * 32, version="2.0"))  # 8 x 32 bits
    msg = fails(packed, r"\$P1B=10: the DATA segment holds 8 events bit-packed")
    assert msg.endswith("(32 bits per event, 32 bytes), not in whole-byte words; "
                        "bit-packed integer data is not supported")
    odd = write(tmp_path, "odd.fcs", build_fcs(kw, b"\x5a" * 40, version="2.0"))
    assert fails(odd, r"\$P1B=10").endswith(
        "$P1B=10: the DATA segment's 40 bytes fit neither $TOT=8 events in 16-bit words (48 bytes) "
        "nor bit-packed (32 bytes)")
    for bad in ("0", "65", "40"):
        kw = base_keywords(2, "I", par=1, **channel_keywords("A", [bad], [1024]))
        fails(write(tmp_path, f"b{bad}.fcs", build_fcs(kw, b"\0" * 8)), rf"\$P1B={bad}: integer widths of 8, 16")


def test_a_file_laid_out_as_the_fc500_reads_both_data_sets(tmp_path):
    raw, words = fc500_like()
    path = write(tmp_path, "fc500.lmd", raw)
    d = read(path)
    assert (d.version, d.n_events, d.n_datasets, d.dataset) == ("2.0", 500, 2, 0)
    np.testing.assert_array_equal(d.events, (words & 1023).astype(np.float32))
    assert [m["bits"] for m in d.channel_meta] == [10] * 4 and d.raw is None
    assert d.warnings == ["TEXT $ENDDATA=4313 is off by one (4001 bytes for 4000); read 500 events"]
    assert d.datasets == [{"dataset": 0, "version": "2.0", "events": 500, "parameters": 4},
                          {"dataset": 1, "version": "3.0", "events": 500, "parameters": 6}]
    second = read(path, dataset=1)
    assert second.version == "3.0" and second.n_channels == 6 and second.names[-1] == "SS INT"


@pytest.mark.parametrize("asked", [0, 1])
def test_an_unreadable_data_set_names_the_data_sets_and_the_one_that_reads(tmp_path, asked):
    if asked == 0:  # a histogram first, list mode second
        raw, _ = fc500_like(first={"$MODE": "C"})
    else:  # list mode first, then a data set whose DATA overruns the file
        second = float_file(np.ones((4, 2)), extra={"$TOT": "40"}, version="3.0")
        probe = int_file(np.ones((3, 2), int), [8, 8], [256] * 2, nextdata=0)
        raw = int_file(np.ones((3, 2), int), [8, 8], [256] * 2, nextdata=len(probe)) + second
    path = write(tmp_path, "two.fcs", raw)
    msg = fails(path, rf"\(data set {asked}\); the file holds data sets 0 \(FCS ", dataset=asked)
    if asked == 0:
        assert msg == (f"{path}: $MODE=C is not supported; only list mode (L), not histograms (C, U) (data set 0); "
                       "the file holds data sets 0 (FCS 2.0, 500 events, 4 parameters) and "
                       "1 (FCS 3.0, 500 events, 6 parameters); --dataset 1 reads")
    else:
        assert "1 (FCS 3.0, 40 events, 2 parameters); --dataset 0 reads" in msg
    assert read(path, dataset=1 - asked).n_events in (3, 500)


def test_an_unreadable_data_set_alone_keeps_its_message(tmp_path):
    raw, _ = fc500_like(first={"$MODE": "C"})
    path = write(tmp_path, "one.fcs", raw[: raw.index(b"FCS3.0")])  # $NEXTDATA now points past the end
    assert fails(path, r"\$MODE=C").endswith("not histograms (C, U)")


def test_packing_checks_use_the_header_offsets_when_text_has_none(tmp_path):
    words = _words(20)
    kw = base_keywords(20, "I", "1,2", par=3, **channel_keywords("ABC", [10, 16, 10], [1024, 65536, 1024]))
    path = write(tmp_path, "h.fcs", build_fcs(kw, pack_ints(words, [16] * 3), version="2.0", text_offsets=False))
    np.testing.assert_array_equal(read(path).events, words & [1023, 65535, 1023])
