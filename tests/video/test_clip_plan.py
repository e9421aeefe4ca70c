"""Clip planning: deterministic per (seed, video), key frames at the asked rate, offsets in range,
short videos, never an index past the last frame, codec-keyframe alignment and its decode cost."""
import numpy as np
import pytest

from semidff.video.clip_plan import (
    REASON_CANNOT_PLAN,
    REASON_TOO_SHORT,
    SEMANTIC_OFFSETS,
    ClipSpec,
    VideoPlan,
    frames_decoded_for,
    plan_clips,
    plan_video,
)


def video(num_frames=250, fps=25.0, video_id="v0"):
    return dict(video_id=video_id, uri=f"/videos/{video_id}.mp4", num_frames=num_frames, fps=fps)


def test_same_seed_and_video_give_the_same_plan_whatever_else_is_planned():
    a, b = video(video_id="a"), video(video_id="b")
    first = [plan_clips(v, currents_per_key=3, seed=7) for v in (a, b)]
    second = [plan_clips(v, currents_per_key=3, seed=7) for v in (b, a)][::-1]
    assert first == second
    assert plan_clips(a, currents_per_key=3, seed=8) != first[0]  # 10 keys x 3 of 9 offsets: equal by chance ~1e-20
    assert [c.offsets for c in first[0]] != [c.offsets for c in first[1]]  # each video draws its own offsets


def test_clip_ids_name_the_video_and_the_key_and_the_fields_agree():
    clips = plan_clips(video(), currents_per_key=2)
    for clip in clips:
        assert clip.clip_id == f"v0:{clip.key_index}" and clip.uri == "/videos/v0.mp4"
        assert clip.current_indices == tuple(clip.key_index + d for d in clip.offsets)
        assert clip.frame_indices == tuple(sorted({clip.key_index, *clip.current_indices}))
        assert clip.frames_decoded is None  # no codec keyframes given


def test_key_frames_per_second_are_evenly_spaced_from_frame_0():
    assert [c.key_index for c in plan_clips(video(250, 25.0))] == list(range(0, 250, 25))  # 1 per second
    assert [c.key_index for c in plan_clips(video(100, 25.0), key_frames_per_second=2)] == [0, 13, 25, 38, 50, 63, 75, 88]
    assert [c.key_index for c in plan_clips(video(300, 29.97), key_frames_per_second=1)] == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    # faster than the frame rate: every usable frame once
    assert [c.key_index for c in plan_clips(video(6, 2.0), key_frames_per_second=5)] == [0, 1, 2, 3, 4]


def test_key_frames_per_video_spread_over_the_usable_frames():
    assert [c.key_index for c in plan_clips(video(101), key_frames_per_video=4)] == [0, 25, 50, 75]
    assert [c.key_index for c in plan_clips(video(101), key_frames_per_video=1)] == [0]
    assert [c.key_index for c in plan_clips(video(4), key_frames_per_video=10)] == [0, 1, 2]  # more keys than usable frames


def test_offsets_are_distinct_and_within_the_range():
    for lo, hi in [(1, 9), (0, 9), (3, 5), (4, 4)]:
        m = min(3, hi - lo + 1)
        for clip in plan_clips(video(500), currents_per_key=m, offset_range=(lo, hi), seed=3):
            assert len(clip.offsets) == m and len(set(clip.offsets)) == m
            assert all(lo <= d <= hi for d in clip.offsets) and list(clip.offsets) == sorted(clip.offsets)
    # over many keys, every offset of the range is drawn
    drawn = {d for c in plan_clips(video(5000), currents_per_key=2) for d in c.offsets}
    assert drawn == set(range(1, 10))


def test_short_videos_get_fewer_clips_and_fewer_offsets_near_the_end():
    assert plan_clips(video(1)) == []  # regression offsets [1, 9]: no frame after the key
    only = plan_clips(video(1), offset_range=SEMANTIC_OFFSETS, currents_per_key=2)
    assert [(c.key_index, c.current_indices) for c in only] == [(0, (0, 0))]  # d = 0 is the only one that fits, used twice
    (clip,) = plan_clips(video(5), currents_per_key=3)  # shorter than a second: one key
    assert clip.key_index == 0 and set(clip.offsets) <= {1, 2, 3, 4}
    (clip,) = plan_clips(video(2), currents_per_key=3)
    assert clip.current_indices == (1, 1, 1)
    (clip,) = plan_clips(video(4), currents_per_key=5)  # three offsets fit: each used, the rest repeats them
    assert set(clip.offsets) == {1, 2, 3} and len(clip.offsets) == 5
    assert plan_clips(video(0)) == []


def test_no_index_ever_falls_outside_the_video():
    rng = np.random.default_rng(0)
    for trial in range(400):
        num_frames = int(rng.integers(0, 400))
        lo = int(rng.integers(0, 6))
        hi = lo + int(rng.integers(0, 12))
        kwargs = dict(currents_per_key=int(rng.integers(1, 6)), offset_range=(lo, hi), seed=trial)
        if trial % 2:
            kwargs["key_frames_per_second"] = float(rng.uniform(0.05, 40))
        else:
            kwargs["key_frames_per_video"] = int(rng.integers(1, 50))
        keyframes = sorted({0, *rng.integers(0, max(1, num_frames), size=5).tolist()})
        kwargs.update(codec_keyframes=keyframes, align_to_codec_keyframes=bool(trial % 3 == 0))
        clips = plan_clips(video(num_frames, float(rng.uniform(1, 60)), f"v{trial}"), **kwargs)
        keys = [c.key_index for c in clips]
        assert keys == sorted(set(keys)), kwargs
        assert len({c.clip_id for c in clips}) == len(clips)
        for clip in clips:
            assert 0 <= clip.key_index and all(clip.key_index + lo <= i < num_frames for i in clip.current_indices), (num_frames, kwargs, clip)
            assert len(clip.current_indices) == kwargs["currents_per_key"]
            assert all(lo <= d <= hi for d in clip.offsets)
            if kwargs["align_to_codec_keyframes"]:
                assert clip.key_index in keyframes
        if num_frames > lo and not kwargs["align_to_codec_keyframes"]:
            assert clips  # a video with a usable frame always gets a clip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(offset_range=(5, 1)), "lo must be <= hi"),
        (dict(offset_range=(-9, -1)), "must be >= 0"),
        (dict(key_frames_per_second=0.0), "finite number > 0"),
        (dict(key_frames_per_second=float("nan")), "finite number > 0"),
        (dict(key_frames_per_second=1.0, key_frames_per_video=3), "not both"),
        (dict(key_frames_per_video=0), "integer >= 1"),
        (dict(currents_per_key=0), "currents_per_key"),
        (dict(seed=-1), "seed"),
        (dict(align_to_codec_keyframes=True), "needs codec_keyframes"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_clips(video(), **kwargs)


def test_a_video_without_frame_rate_needs_a_count_per_video():
    with pytest.raises(ValueError, match="frame rate is unknown.*key_frames_per_video"):
        plan_clips(video(fps=None))
    assert len(plan_clips(video(fps=None), key_frames_per_video=3)) == 3


def test_aligned_keys_land_on_codec_keyframes_and_decode_fewer_frames():
    keyframes = list(range(0, 250, 10))  # GOP 10
    plain = plan_clips(video(250), codec_keyframes=keyframes, currents_per_key=2)
    aligned = plan_clips(video(250), codec_keyframes=keyframes, currents_per_key=2, align_to_codec_keyframes=True)
    assert [c.key_index for c in aligned] == [0, 20, 50, 70, 100, 120, 150, 170, 200, 220]  # 25 -> 20 (tie: earlier), 50 stays
    for plan in (plain, aligned):  # each clip: what it adds to one ascending read of the plan
        assert sum(c.frames_decoded for c in plan) == frames_decoded_for([i for c in plan for i in c.frame_indices], keyframes)
        assert all(1 <= c.frames_decoded <= frames_decoded_for(c, keyframes) for c in plan)
    assert all(c.frames_decoded <= 10 for c in aligned)  # from the keyframe to the last current frame at most
    assert np.mean([c.frames_decoded for c in aligned]) < np.mean([c.frames_decoded for c in plain])


def test_a_gop_longer_than_the_key_spacing_gives_one_clip_per_keyframe():
    aligned = plan_clips(video(500), codec_keyframes=[0, 250], align_to_codec_keyframes=True)
    assert [c.key_index for c in aligned] == [0, 250]
    # a keyframe after the last usable key cannot be used
    assert [c.key_index for c in plan_clips(video(30), codec_keyframes=[0, 29], align_to_codec_keyframes=True)] == [0]


def test_clips_in_one_long_gop_share_the_decoding():
    clips = plan_clips(video(500), codec_keyframes=[0, 250])  # 20 keys, 10 per GOP
    alone = [frames_decoded_for(c, [0, 250]) for c in clips]
    assert [c.frames_decoded for c in clips][:2] == [alone[0], clips[1].current_indices[-1] - clips[0].current_indices[-1]]
    assert sum(c.frames_decoded for c in clips) < sum(alone) / 4


def test_frames_decoded_counts_forward_decoding_from_the_last_keyframe():
    keyframes = [0, 10, 20]
    assert frames_decoded_for([12], keyframes) == 3  # 10, 11, 12
    assert frames_decoded_for([12, 15], keyframes) == 6  # forward within the GOP: 10..15
    assert frames_decoded_for([8, 12], keyframes) == 9 + 3  # 0..8, then seek to 10
    assert frames_decoded_for([12, 25], keyframes) == 3 + 6
    assert frames_decoded_for([15, 12, 12], keyframes) == 6  # order and repeats do not matter
    assert frames_decoded_for([2], [5]) == 3  # before the first listed keyframe: from frame 0
    assert frames_decoded_for([], keyframes) == 0
    clip = ClipSpec("v:10", "v", "", 10, (13, 13, 11), (1, 3, 3))
    assert frames_decoded_for(clip, keyframes) == 4


# ---------------------------------------------------------------------------------------------
# VideoPlan: planned once (the teacher cache's driver), costed where the file is open (the decode task)


def test_a_plan_made_without_keyframes_and_costed_later_equals_the_plan_made_with_them():
    args = dict(key_frames_per_second=2.0, currents_per_key=2, offset_range=(1, 9), seed=3)
    keyframes = [0, 30, 60, 90, 120, 150, 180, 210, 240]
    plan = plan_video(video(), **args)
    assert plan.reason == "" and all(clip.frames_decoded is None for clip in plan.clips)
    assert plan.with_codec_keyframes(keyframes).clips == tuple(plan_clips(video(), codec_keyframes=keyframes, **args))
    assert plan.clip_ids == [clip.clip_id for clip in plan_clips(video(), **args)]
    assert VideoPlan.from_json(plan.to_json()) == plan
    costed = plan.with_codec_keyframes(keyframes)
    assert VideoPlan.from_json(costed.to_json()) == costed


def test_a_video_without_clips_says_why_and_stands_as_one_row():
    short = plan_video(video(num_frames=2), offset_range=(2, 6), key_frames_per_video=3)
    assert (short.clips, short.reason, short.clip_ids) == ((), REASON_TOO_SHORT, ["v0:-1"])
    assert "2 frame(s), too few for a current frame at offset d >= 2 (clips.offset_range=[2, 6])" in short.error
    no_rate = plan_video(video(fps=None), key_frames_per_second=1.0)
    assert no_rate.reason == REASON_CANNOT_PLAN and no_rate.error.startswith("/videos/v0.mp4: video v0 (/videos/v0.mp4): its frame rate is unknown")
    aligned = plan_video(video(num_frames=20), offset_range=(1, 9), codec_keyframes=[19], align_to_codec_keyframes=True)
    assert aligned.reason == REASON_CANNOT_PLAN and "no codec keyframe leaves room" in aligned.error
    assert VideoPlan.from_json(short.to_json()) == short
    bad_keyframes = plan_video(video(), key_frames_per_video=2).with_codec_keyframes([-1, 0])
    assert bad_keyframes.clips == () and bad_keyframes.reason == REASON_CANNOT_PLAN and "negative index" in bad_keyframes.error
