import pytest

from attn_bench.pages import PrefixWorkload, held_fraction, predicted_hits, reused_tokens


def test_held_fraction_counts_the_empty_slots_of_part_filled_pages():
    # 10 + 16 + 17 tokens hold 16 + 16 + 32 slots: 21 empty for 43 used.
    assert held_fraction([10, 16, 17], 16) == pytest.approx(21 / 43)
    assert held_fraction([128, 256], 128) == 0.0
    with pytest.raises(ValueError, match="page"):
        held_fraction([1], 0)


def test_reuse_is_whole_pages_and_never_the_last_token():
    assert reused_tokens(333, 378, 128) == 256
    assert reused_tokens(333, 378, 16) == 320
    assert reused_tokens(64, 64, 16) == 48  # a fully cached prompt still computes its last page


def test_predicted_hits_of_the_default_workload():
    w = PrefixWorkload()
    # floor(p / 16) * 16 for p = 333, 517, 701, 919, three later prompts per group.
    assert predicted_hits(w, 16) == 3 * (320 + 512 + 688 + 912)
    assert predicted_hits(w, 128) == 3 * (256 + 512 + 640 + 896)


def test_groups_share_exactly_their_prefix():
    w = PrefixWorkload(prefix_lens=(5, 7), per_group=3, suffix_len=4)
    first, rest = w.prompts(vocab=50)
    assert [len(p) for p in first] == [9, 11] and len(rest) == 4
    assert rest[0][:5] == first[0][:5] and rest[2][:7] == first[1][:7]
    assert len({tuple(p) for p in first + rest}) == 6
