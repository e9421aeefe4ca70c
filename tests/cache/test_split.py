"""The validation split: whole videos, by a stable hash, about the asked share."""
import pytest

from semidff.cache.split import check_split, is_validation_video, video_hash_fraction


def test_split_is_stable_nested_and_about_the_fraction():
    ids = [f"{i:016x}" for i in range(2000)]
    held = [v for v in ids if is_validation_video(v, 0.3)]
    assert 0.27 < len(held) / len(ids) < 0.33
    assert set(v for v in ids if is_validation_video(v, 0.1)) <= set(held)  # growing the fraction only adds videos
    assert not any(is_validation_video(v, 0.0) for v in ids)
    assert [is_validation_video(v, 0.3) for v in ids[:50]] == [video_hash_fraction(v) < 0.3 for v in ids[:50]]
    assert video_hash_fraction("abc") == video_hash_fraction("abc") and 0 <= video_hash_fraction("abc") < 1


def test_bad_split_arguments():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        is_validation_video("a", 1.0)
    with pytest.raises(ValueError, match="expected one of all, train, val"):
        check_split("test", 0.1)
    with pytest.raises(ValueError, match="selects no video"):
        check_split("val", 0.0)
