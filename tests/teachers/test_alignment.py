import pytest

from mert.teachers.base import crop_slice, student_frames
from mert.teachers.label_run import plan_windows, select_range


@pytest.mark.parametrize(
    "seconds, student, codec",
    [(3.0, 224, 225), (5.0, 374, 375), (5.12, 383, 384), (30.0, 2249, 2250)],
)
def test_frame_counts(seconds, student, codec):
    n = round(seconds * 24_000)
    assert student_frames(n) == student
    assert -(-n // 320) == codec  # EnCodec: ceil(L / 320)
    # the student's conv stack, layer by layer (k, s): same count
    length = n
    for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        length = (length - k) // s + 1
    assert length == student


def test_crop_slice_maps_crops_onto_whole_clip_labels():
    assert crop_slice(0, 120_000) == slice(0, 374)
    assert crop_slice(320 * 10, 122_880) == slice(10, 393)
    with pytest.raises(ValueError, match="multiple of 320"):
        crop_slice(100, 120_000)
    # the last crop of a clip never needs a frame past the clip's own label count
    clip = 30 * 24_000 + 123
    for crop in (72_000, 120_000, 122_880):
        last = (clip - crop) // 320 * 320
        assert crop_slice(last, crop).stop <= student_frames(clip)


def test_too_short():
    assert student_frames(399) == 0 and student_frames(400) == 1


@pytest.mark.parametrize("length", [400, 24_000, 720_000, 720_400, 2_000_017])
@pytest.mark.parametrize("chunk, left, right", [(2250, 75, 0), (100, 4, 4), (7, 0, 0)])
def test_windows_cover_every_frame_once_with_context(length, chunk, left, right):
    frames = student_frames(length)
    ws = plan_windows(0, length, chunk, left, right)
    assert [w.first for w in ws] == sorted(w.first for w in ws)
    assert sum(w.count for w in ws) == frames and ws[0].first == 0
    for a, b in zip(ws, ws[1:]):
        assert a.first + a.count == b.first
    for w in ws:
        assert w.start % 320 == 0 and w.start + w.length <= length and w.count <= chunk
        assert w.start // 320 + w.keep == w.first
        assert w.keep == min(left, w.first)  # left context, unless the clip starts inside it
        assert student_frames(w.length) >= w.keep + w.count  # the window holds every kept frame


def test_select_range_partitions_the_manifest():
    rows = list(range(23))
    for n in (1, 2, 3, 5, 23, 30):
        got = []
        for i in range(n):
            part, (a, b) = select_range(rows, i, n)
            assert part == rows[a:b]
            got += part
        assert got == rows
    part, (a, b) = select_range(rows, 1, 2, start=5, stop=15)
    assert (a, b) == (10, 15) and part == rows[10:15]
    with pytest.raises(ValueError):
        select_range(rows, 2, 2)
