import pytest

from sslseg.data.splits import (
    apply_splits,
    assign_splits,
    labelled_subset,
    parse_budget,
    resolve_budget,
    splits_for,
)


def test_splits_partition_cases_without_overlap(tiny_cases):
    s = assign_splits(tiny_cases, 0.2, 0.3, seed=1)
    groups = {k: {c for c, v in s.items() if v == k} for k in ("train", "val", "test")}
    assert set(s) == {c.case_id for c in tiny_cases}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert not groups["val"] & groups["test"]
    assert all(groups.values())


def test_splits_depend_only_on_ids_and_seed(tiny_cases):
    assert assign_splits(tiny_cases, seed=3) == assign_splits(list(reversed(tiny_cases)), seed=3)
    assert assign_splits(tiny_cases, seed=3) != assign_splits(tiny_cases, seed=4)


def test_given_splits_are_kept(tiny_cases):
    tiny_cases[0].split = "test"
    tiny_cases[1].split = "train"
    s = assign_splits(tiny_cases, seed=0)
    assert s[tiny_cases[0].case_id] == "test" and s[tiny_cases[1].case_id] == "train"


def test_split_saved_then_reused(tiny_cases, tmp_path):
    first = splits_for(tiny_cases, tmp_path / "s.json", seed=0)
    for c in tiny_cases:
        c.split = None
    again = splits_for(tiny_cases, tmp_path / "s.json", seed=99)  # the saved file wins over the seed
    assert first == again


def test_saved_split_must_cover_every_case(tiny_cases):
    with pytest.raises(ValueError, match="no entry"):
        apply_splits(tiny_cases, {tiny_cases[0].case_id: "train"})


def test_label_subsets_are_nested_and_seeded():
    ids = [f"c{i}" for i in range(20)]
    prev: set[str] = set()
    for k in (1, 2, 4, 8, 20):
        cur = set(labelled_subset(ids, k, seed=5))
        assert len(cur) == k and prev <= cur
        prev = cur
    assert labelled_subset(ids, 4, seed=5) != labelled_subset(ids, 4, seed=6)


@pytest.mark.parametrize("text,n,expected", [("4", 10, 4), ("5%", 100, 5), ("5%", 10, 1), ("100%", 7, 7), ("1", 1, 1)])
def test_budgets(text, n, expected):
    assert resolve_budget(text, n) == expected


@pytest.mark.parametrize("bad", ["0", "-2", "0%", "abc", "150%", ""])
def test_bad_budgets_rejected(bad):
    with pytest.raises(ValueError, match="label budget"):
        parse_budget(bad)


def test_budget_larger_than_training_cases():
    with pytest.raises(ValueError, match="larger than the 5"):
        resolve_budget("6", 5)


def test_unlabelled_cases_go_to_training_never_to_val_or_test(tiny_cases):
    # 12 labelled + 12 unlabelled: val and test come from the labelled cases only
    from sslseg.data.sample import Case

    unlabelled = [Case(f"u{i:02d}", c.frames, {}) for i, c in enumerate(tiny_cases)]
    s = assign_splits(tiny_cases + unlabelled, 0.2, 0.3, seed=1)
    assert all(s[c.case_id] == "train" for c in unlabelled)
    labelled = {c.case_id: s[c.case_id] for c in tiny_cases}
    assert sum(v == "test" for v in labelled.values()) == round(0.3 * 12)
    assert sum(v == "val" for v in labelled.values()) == round(0.2 * 12)
    # the labelled draw does not depend on how many unlabelled cases there are
    assert labelled == assign_splits(tiny_cases, 0.2, 0.3, seed=1)
