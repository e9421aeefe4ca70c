"""Pair rows (the cache reader's numpy batches) → same-size PairBatch micro-batches, exactly the
tensors the on-the-fly teacher would give for the same frames."""
import warnings

import numpy as np
import pytest
import torch

from semidff.config import load_config
from semidff.models.build import build_rfcn
from semidff.preprocess import normalize_frames
from semidff.teacher_targets import pair_batch_on_the_fly, split_targets, teacher_outputs
from semidff.training.flow_batch import pair_batches_from_cache, pair_batches_on_the_fly, rows_by_image_size


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_rfcn(load_config("jobs/configs/tiny.yaml").model).eval()


def _frames(n, height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _rows(teacher, key_frames, cur_frames, offsets):
    """What the cache stores for these pairs: one dict per row."""
    key_targets = split_targets(teacher_outputs(teacher, normalize_frames(key_frames)))
    cur_targets = split_targets(teacher_outputs(teacher, normalize_frames(cur_frames)))
    rows = []
    for i, offset in enumerate(offsets):
        cur = cur_targets[i]
        rows.append(
            dict(key_frame=key_frames[i], cur_frame=cur_frames[i], offset=offset, key_features=key_targets[i].features.numpy(),
                 cur_features=cur.features.numpy(), rpn_cls_logits=cur.rpn_cls_logits.numpy(), rpn_deltas=cur.rpn_deltas.numpy(),
                 rois=cur.rois.numpy(), cls_logits=cur.cls_logits.numpy(), box_deltas=cur.box_deltas.numpy())
        )
    return rows


def _numpy_batch(rows):
    """Columns as Ray's numpy batches hold them: stacked when every row has one shape, else an
    object array of per-row arrays; all read-only."""
    batch = {}
    for name in rows[0]:
        values = [np.asarray(row[name]) for row in rows]
        if len({v.shape for v in values}) == 1:
            column = np.stack(values)
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = values
            for value in values:
                value.setflags(write=False)
        column.setflags(write=False)
        batch[name] = column
    return batch


def test_mixed_sizes_become_same_size_micro_batches_with_the_teachers_tensors(teacher):
    small_key, small_cur = _frames(2, 64, 96, 1), _frames(2, 64, 96, 2)
    large_key, large_cur = _frames(1, 80, 112, 3), _frames(1, 80, 112, 4)
    small_rows = _rows(teacher, small_key, small_cur, [3, 0])
    rows = [small_rows[0], *_rows(teacher, large_key, large_cur, [5]), small_rows[1]]
    batch = _numpy_batch(rows)
    assert [g.tolist() for g in rows_by_image_size(batch)] == [[0, 2], [1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        small, large = pair_batches_from_cache(batch)
    assert small.image_size == (64, 96) and large.image_size == (80, 112)
    assert small.offsets.tolist() == [3, 0] and large.offsets.tolist() == [5]

    expected = pair_batch_on_the_fly(
        teacher, normalize_frames(small_key), normalize_frames(small_cur), torch.tensor([3, 0])
    )
    assert torch.equal(small.key_images, expected.key_images) and torch.equal(small.cur_images, expected.cur_images)
    assert torch.equal(small.key_features, expected.key_features)
    for name in ("features", "rpn_cls_logits", "rpn_deltas", "rois", "cls_logits", "box_deltas"):
        assert torch.equal(getattr(small.teacher, name), getattr(expected.teacher, name)), name
    assert set(small.teacher.rois[:, 0].tolist()) == {0.0, 1.0}  # re-indexed within the micro-batch
    assert set(large.teacher.rois[:, 0].tolist()) == {0.0}

    on_the_fly = pair_batches_on_the_fly({k: batch[k] for k in ("key_frame", "cur_frame", "offset")}, teacher)
    assert [b.image_size for b in on_the_fly] == [(64, 96), (80, 112)]
    assert torch.equal(on_the_fly[1].teacher.cls_logits, large.teacher.cls_logits)


def test_one_size_gives_one_batch_and_fp16_targets_are_widened(teacher):
    rows = _rows(teacher, _frames(3, 64, 96, 5), _frames(3, 64, 96, 6), [1, 2, 3])
    for row in rows:
        row["key_features"] = row["key_features"].astype(np.float16)
    (only,) = pair_batches_from_cache(_numpy_batch(rows))
    assert only.key_features.dtype == torch.float32 and only.key_images.shape == (3, 3, 64, 96)
    assert only.teacher.rois.shape[0] == sum(r["rois"].shape[0] for r in rows)


def test_bad_rows_are_refused_with_what_is_wrong(teacher):
    rows = _rows(teacher, _frames(1, 64, 96, 7), _frames(1, 64, 96, 8), [1])
    with pytest.raises(ValueError, match="lacks the columns"):
        pair_batches_from_cache(_numpy_batch([{k: v for k, v in rows[0].items() if k != "rois"}]))
    wrong = dict(rows[0], cur_features=rows[0]["cur_features"][:, :2])
    with pytest.raises(ValueError, match="another preprocessing"):
        pair_batches_from_cache(_numpy_batch([wrong]))
    mismatched = dict(rows[0], cur_frame=_frames(1, 48, 96, 9)[0])
    with pytest.raises(ValueError, match="one size"):
        pair_batches_from_cache(_numpy_batch([mismatched]))
