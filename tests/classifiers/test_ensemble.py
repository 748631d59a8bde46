"""Choosing ensemble members: the one parser of ``--members``, used at the edges (CLI, Python API)."""

import pytest

from classifiers.ensemble import parse_members


def test_members_against_the_checkpoints_found() -> None:
    available = [0, 1, 2, 5]
    assert parse_members("all", available) == [0, 1, 2, 5]
    assert parse_members("2", available) == [0, 1]  # the first two found
    assert parse_members("5,0", available) == [5, 0]  # the order asked for
    assert parse_members("2,", available) == [2]  # one index, not a count
    with pytest.raises(ValueError, match=r"no checkpoint for member\(s\) \[3\]"):
        parse_members("0,3", available)
    with pytest.raises(ValueError, match="between 1 and 4"):
        parse_members("5", available)


def test_members_to_train_need_no_checkpoints() -> None:
    assert parse_members("3") == [0, 1, 2]
    assert parse_members("0,2,5") == [0, 2, 5]
    assert parse_members("all") is None  # the config's count


@pytest.mark.parametrize("spec", ["", "two", "0,x", "-1,2", "0"])
def test_bad_member_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--members"):
        parse_members(spec, [0, 1])
