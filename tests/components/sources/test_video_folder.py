"""The video_folder source: GIFs and frame folders, length rules, and bad clips named with their reason."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.examples import RecordError
from components.sources.video_folder import Reader, frame_indices, numbered_frames, read_clip
from pipeline.config import IngestSection, VideoFolderSource

SIDE = 8


def frame(value: int) -> np.ndarray:
    """A uniform frame whose red channel is `value`, so a decoded frame tells which one it was."""
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[..., 0] = value
    pixels[..., 2] = 255 - value
    return pixels


def write_gif(path: Path, count: int) -> Path:
    images = [Image.fromarray(frame(20 * i)) for i in range(count)]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return path


def write_frames(folder: Path, numbers, name="frame_{:04d}.png") -> Path:
    folder.mkdir(parents=True)
    for n in numbers:
        Image.fromarray(frame(20 * n)).save(folder / name.format(n))
    return folder


def red(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0, 0]) for f in frames]


def reader(root: Path, num_frames=4, policy="sample") -> Reader:
    source = VideoFolderSource(path=str(root), num_frames=num_frames, length_policy=policy)
    return Reader(source, IngestSection(source=source, task="video"))


@pytest.fixture
def dataset(tmp_path):
    """left/: a 6-frame GIF and a 3-frame folder; right/: a 4-frame GIF."""
    root = tmp_path / "clips"
    (root / "left").mkdir(parents=True)
    (root / "right").mkdir()
    write_gif(root / "left" / "a.gif", 6)
    write_frames(root / "left" / "b", [1, 2, 3])
    write_gif(root / "right" / "c.gif", 4)
    return root


# ------------------------------------------------------------------------------------------------
# length rules
# ------------------------------------------------------------------------------------------------
def test_sample_takes_evenly_spaced_frames_keeping_first_and_last():
    # 16 -> 8: positions i * 15/7 = 0, 2.14, 4.29, 6.43, 8.57, 10.71, 12.86, 15, rounded half up
    assert frame_indices(16, 8, "sample") == [0, 2, 4, 6, 9, 11, 13, 15]
    assert frame_indices(8, 8, "sample") == list(range(8))
    # 3 -> 8 stretches: i * 2/7 = 0, .29, .57, .86, 1.14, 1.43, 1.71, 2
    assert frame_indices(3, 8, "sample") == [0, 0, 1, 1, 1, 1, 2, 2]
    assert frame_indices(5, 1, "sample") == [2]


def test_pad_repeats_the_last_frame_and_cuts_long_clips():
    assert frame_indices(3, 6, "pad") == [0, 1, 2, 2, 2, 2]
    assert frame_indices(10, 4, "pad") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="length_policy: expected one of"):
        frame_indices(3, 4, "loop")


# ------------------------------------------------------------------------------------------------
# reading clips
# ------------------------------------------------------------------------------------------------
def test_gif_and_frame_folder_decode_every_frame_in_order(dataset):
    gif = read_clip(dataset / "left" / "a.gif")
    assert gif.shape == (6, SIDE, SIDE, 3) and gif.dtype == np.uint8
    assert red(gif) == [0, 20, 40, 60, 80, 100]
    folder = read_clip(dataset / "left" / "b")
    assert folder.shape == (3, SIDE, SIDE, 3)
    assert red(folder) == [20, 40, 60]


def test_frames_are_ordered_by_number_not_by_name(tmp_path):
    folder = write_frames(tmp_path / "clip", [1, 2, 10, 3, 4, 5, 6, 7, 8, 9], name="f{}.png")  # f10 sorts before f2
    assert [n for n, _ in numbered_frames(folder)] == list(range(1, 11))
    assert red(read_clip(folder)) == [20 * n for n in range(1, 11)]


def test_reader_lists_clips_labels_by_folder_and_applies_the_length_rule(dataset):
    source = reader(dataset, num_frames=4, policy="sample")
    assert source.class_names() == ["left", "right"]
    items = source.list_items()
    assert [Path(i).relative_to(dataset).as_posix() for i in items] == ["left/a.gif", "left/b", "right/c.gif"]
    records = {r["id"]: r for item in items for r in source.read(item)}
    a, b, c = (records[f"video_folder/{k}"] for k in ("left/a.gif", "left/b", "right/c.gif"))
    assert (a["label"], b["label"], c["label"]) == (0, 0, 1)
    assert all(r["frames"].shape == (4, SIDE, SIDE, 3) for r in (a, b, c))
    assert red(a["frames"]) == [0, 40, 60, 100]  # 6 -> 4: i * 5/3 = 0, 1.67, 3.33, 5 -> 0, 2, 3, 5
    assert red(b["frames"]) == [20, 40, 40, 60]  # 3 -> 4: i * 2/3 = 0, .67, 1.33, 2 -> 0, 1, 1, 2
    assert a["source"] == str(dataset / "left" / "a.gif")


def test_pad_policy_repeats_last_frame_and_is_recorded_in_the_schema(dataset):
    source = reader(dataset, num_frames=5, policy="pad")
    (b,) = source.read(str(dataset / "left" / "b"))
    assert red(b["frames"]) == [20, 40, 60, 60, 60]
    (a,) = source.read(str(dataset / "left" / "a.gif"))
    assert red(a["frames"]) == [0, 20, 40, 60, 80]
    extras = source.schema_extras()
    assert extras["num_frames"] == 5 and extras["length_policy"] == "pad"
    assert "repeats its last frame" in extras["length_rule"]
    assert "evenly spaced" in reader(dataset, policy="sample").schema_extras()["length_rule"]


# ------------------------------------------------------------------------------------------------
# bad clips
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [1, 30, 0.5])
def test_truncated_gif_names_the_path_and_the_reason(tmp_path, cut):
    path = write_gif(tmp_path / "clip.gif", 5)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)] if cut < 1 else data[:-cut])
    with pytest.raises(RecordError, match=rf"^{path}: truncated"):
        read_clip(path)


def test_frame_folder_with_a_missing_number_names_the_folder_and_the_numbers(tmp_path):
    folder = write_frames(tmp_path / "clip", [1, 2, 4, 5, 8])
    with pytest.raises(RecordError) as caught:
        read_clip(folder)
    assert str(caught.value) == f"{folder}: missing frame numbers 3, 6-7 (found 5 frames numbered 1..8)"


def test_frame_folder_starting_late_is_missing_its_first_frames(tmp_path):
    folder = write_frames(tmp_path / "clip", [3, 4, 5])
    with pytest.raises(RecordError, match=rf"^{folder}: missing frame numbers 1-2: frames start at frame_0003.png"):
        read_clip(folder)


def test_other_bad_clips_are_named(tmp_path):
    mixed = write_frames(tmp_path / "mixed", [1, 2])
    Image.fromarray(np.zeros((SIDE + 2, SIDE, 3), np.uint8)).save(mixed / "frame_0003.png")
    with pytest.raises(RecordError, match=rf"^{mixed / 'frame_0003.png'}: frame size \[10, 8\] differs"):
        read_clip(mixed)
    unnumbered = write_frames(tmp_path / "unnumbered", [1])
    Image.fromarray(frame(0)).save(unnumbered / "cover.png")
    with pytest.raises(RecordError, match="expected a numbered frame name"):
        read_clip(unnumbered)
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 10)
    with pytest.raises(RecordError, match=r"clip.mp4: expected an animated .gif or a folder"):
        read_clip(tmp_path / "clip.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="empty: no frames"):
        read_clip(tmp_path / "empty")


def test_fingerprint_changes_when_a_clip_changes(dataset):
    before = reader(dataset).fingerprint()
    assert reader(dataset).fingerprint() == before
    write_gif(dataset / "right" / "d.gif", 3)
    assert reader(dataset).fingerprint() != before
    assert reader(dataset, num_frames=6).fingerprint() != reader(dataset).fingerprint()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ingest.source.path: expected a folder"):
        reader(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# through ingest: bad clips land in the dead-letter file with their paths
# ------------------------------------------------------------------------------------------------
def test_ingest_sends_truncated_gif_and_gapped_folder_to_dead_letters(dataset, tmp_path):
    from components.ingest.stage import run_ingest
    from pipeline.config import parse_config
    from pipeline.stage import ExecutionContext

    truncated = dataset / "right" / "cut.gif"
    truncated.write_bytes(write_gif(tmp_path / "whole.gif", 4).read_bytes()[:-20])
    gapped = write_frames(dataset / "right" / "gap", [1, 3])
    config = parse_config({
        "ingest": {"task": "video", "num_shards": 1, "max_bad_fraction": 0.5,
                   "source": {"name": "video_folder", "path": str(dataset), "num_frames": 4}}})
    out = tmp_path / "examples"
    out.mkdir()
    ctx = ExecutionContext(config=config, params={}, inputs={}, outputs={"examples": out}, work_dir=tmp_path / "work",
                           root=tmp_path, run_id=1, execution_id=1, log=logging.getLogger("test"))
    run_ingest(ctx)

    dead = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    by_item = {entry["item"]: entry["reason"] for entry in dead}
    assert set(by_item) == {str(truncated), str(gapped)}
    assert f"{truncated}: truncated" in by_item[str(truncated)]
    assert f"{gapped}: missing frame number 2 " in by_item[str(gapped)]
    schema = json.loads((out / "schema.json").read_text())
    assert schema["num_frames"] == 4 and schema["length_policy"] == "sample"
    assert sum(schema["split_counts"].values()) == 3
