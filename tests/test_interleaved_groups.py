"""Interleaved 1F1B with micro-batch groups (Megatron-Core's microbatch_group_size_per_vp_stage)."""

from collections import Counter

import pytest

from gpuhours.simulator.schedules import build_schedule, validate
from gpuhours.simulator.schedules.interleaved import build_interleaved, default_group_size, virtual_order


def _closed_form_programs(pp, m, vpp):
    """The order for m a multiple of pp, written out: the k-th virtual forward of a rank is chunk (k // pp) % vpp
    of micro-batch (k // (pp vpp)) pp + k % pp; backwards walk it with chunks reversed; rank r warms up with
    2 (pp-1-r) + (vpp-1) pp forwards, then pairs F, BW, then drains."""
    def mb(k):
        return (k // (pp * vpp)) * pp + k % pp

    def chunk(k):
        return (k // pp) % vpp

    out = []
    for r in range(pp):
        total = m * vpp
        w = min(2 * (pp - 1 - r) + (vpp - 1) * pp, total)
        f = [("F", mb(k), chunk(k) * pp + r) for k in range(total)]
        b = [("BW", mb(k), (vpp - 1 - chunk(k)) * pp + r) for k in range(total)]
        prog = f[:w]
        for i in range(total - w):
            prog += [f[w + i], b[i]]
        out.append(prog + b[total - w:])
    return out


def _as_tuples(schedule):
    return [[(i.kind, i.microbatch, i.stage) for i in prog] for prog in schedule.programs]


def test_megatron_table_example():
    # Megatron-Core's schedules.py comment: PP 2, N 3, M 5, VP 2 ->
    # micro-batch 0 1 2 0 1 2 3 4 3 4, model chunk 0 0 0 1 1 1 0 0 1 1
    assert virtual_order(5, 2, 3) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (3, 0), (4, 0), (3, 1), (4, 1)]


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("vpp", [1, 2, 3])
def test_any_microbatch_count_from_pp_builds_a_valid_schedule(pp, vpp):
    for m in range(pp, 3 * pp + 3):
        s = build_schedule("interleaved-1f1b", pp, m, vpp=vpp)
        validate(s)
        parts = Counter((i.kind, i.microbatch, i.stage) for prog in s.programs for i in prog)
        assert set(parts.values()) == {1}
        assert set(parts) == {(k, mb, st) for k in ("F", "BW") for mb in range(m) for st in range(pp * vpp)}
        if m % pp == 0:
            assert _as_tuples(s) == _closed_form_programs(pp, m, vpp)


def test_group_size_follows_megatron_rules():
    assert default_group_size(4, 8) == 4           # Megatron-Core's default: pp
    assert default_group_size(4, 6) == 6           # 4 and 5 would leave a last group of 2 or 1 (< pp)
    assert default_group_size(4, 11) == 6          # 4 leaves 3, 5 leaves 1, 6 leaves 5 >= 4
    assert default_group_size(4, 10) == 5          # 4 leaves 2; 5 divides 10
    s = build_interleaved(2, 5, 2, group_size=3)   # the table example above, on two ranks
    validate(s)
    # rank 1 warms up with 2 (pp-1-1) + (vpp-1) N = 3 forwards: micro-batches 0, 1, 2 of chunk 0 (stage 1)
    assert _as_tuples(s)[1][:4] == [("F", 0, 1), ("F", 1, 1), ("F", 2, 1), ("F", 0, 3)]
    for m, bad in ((7, 2), (7, 5), (4, 5)):  # below pp; a last group of 2 < pp; above m
        with pytest.raises(ValueError, match="group_size"):
            build_interleaved(4, m, 2, group_size=bad)
    with pytest.raises(ValueError, match="at least pp=4"):
        build_interleaved(4, 3, 2)
