"""Video clips as inputs (engine.video, `python -m engine.verify PHOTO CLIP`, FaceVerifier.verify_video).

Clips are written here with OpenCV's VideoWriter (MP4/mp4v, AVI/MJPG, WebM/VP8); nothing is committed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, face_data_dir, synthetic_face, write_jpeg

from engine.video import Frame, aggregate, is_video

pytest.importorskip("openvino")

CONTAINERS = {"mp4": "mp4v", "avi": "MJPG", "webm": "VP80"}


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """RGB frames -> a clip in the container its suffix names; the writer must open (else skip: no encoder)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CONTAINERS[path.suffix[1:]]), fps, (w, h))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {path.suffix} ({CONTAINERS[path.suffix[1:]]})")
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    return path


def moving(rgb: np.ndarray, n: int = 20) -> list[np.ndarray]:
    """A still that drifts a pixel every few frames, as a hand-held camera does."""
    return [np.roll(np.roll(rgb, k // 4, 1), k // 6, 0) for k in range(n)]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.verify", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_containers_are_told_from_images_by_their_signature():
    assert is_video(b"\0\0\0\x18ftypisom\0\0\0\0") and is_video(b"\0\0\0\x14ftypqt  \0\0\0\0")
    assert is_video(b"\x1a\x45\xdf\xa3\x01\0\0\0") and is_video(b"RIFF\0\0\0\0AVI LIST")
    assert not is_video(b"\0\0\0\x1cftypavif\0\0\0\0") and not is_video(b"\0\0\0\x1cftypheic\0\0")  # images
    assert not is_video(b"\xff\xd8\xff\xe0") and not is_video(b"RIFF\0\0\0\0WEBPVP8 ")


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_a_clip_of_the_reference_face_is_accepted_with_its_timeline(tmp_path, suffix):
    face = synthetic_face(3, 200)
    photo = write_jpeg(tmp_path / "ref.jpg", face)
    clip = write_clip(tmp_path / f"clip.{suffix}", moving(face))
    done = run(photo, clip, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["match"] and info["faced"] == len(info["timeline"]) >= 10 and info["agree"] == 1.0
    frame = info["timeline"][0]
    assert {"seconds", "face", "similarity", "realness", "match", "looks_fake", "box"} <= set(frame)
    assert [f["seconds"] for f in info["timeline"]] == sorted(f["seconds"] for f in info["timeline"])


def test_clips_that_cannot_be_decided_are_exit_2_with_one_line(tmp_path):
    photo = write_jpeg(tmp_path / "ref.jpg", synthetic_face(3, 200))
    noise = write_clip(tmp_path / "noise.mp4",
                       [np.random.default_rng(k).integers(0, 256, (120, 160, 3), dtype=np.uint8) for k in range(10)])
    good = write_clip(tmp_path / "good.mp4", moving(synthetic_face(3, 200)))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:400])  # the header and nothing of the stream
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    cases = {noise: "noise.mp4: no face in any of the", cut: "cut.mp4: ", fifo: "fifo.mp4: is a FIFO"}
    for clip, message in cases.items():
        done = run(photo, clip)
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], (clip, done.stderr)
    for args, message in (((photo, good, "--fps", "0"), "--fps must be in (0, 60]"),
                          ((photo, good, "--frames", "0"), "--frames must be in [1, 1000]"),
                          ((good, good), "two clips are not supported yet"),
                          ((photo, photo, "--fps", "5"), "--fps and --frames are for a video clip")):
        done = run(*args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


def test_limits_are_read_from_the_header_before_any_frame(tmp_path, monkeypatch):
    import engine.video as video

    clip = write_clip(tmp_path / "c.mp4", moving(synthetic_face(1, 160), 12))
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 100 * 100)
    with pytest.raises(video.VideoError, match=r"c\.mp4: header says 160x160 per frame, over the 10,000 pixel limit"):
        video.probe(clip)
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 4000 * 4000)
    monkeypatch.setattr(video, "MAX_VIDEO_SECONDS", 0.5)
    with pytest.raises(video.VideoError, match=r"c\.mp4: header says 1\.2 s, over the 0\.5 s limit"):
        video.probe(clip)


def test_one_bad_frame_cannot_flip_a_clip_and_a_change_of_person_is_reported():
    good = [Frame(k / 5, True, similarity=0.9, match=True, looks_fake=False) for k in range(9)]
    odd = Frame(1.8, True, similarity=0.1, match=False, looks_fake=True)
    emb = np.tile([1.0, 0.0], (10, 1))
    emb[9] = [0.0, 1.0]  # the last frame's face is someone else
    result = aggregate(good + [odd], emb, 0.5)
    assert result.match and result.agree == pytest.approx(0.9) and result.changes == [1.8]
    faked = [Frame(k / 5, True, similarity=0.9, match=True, looks_fake=k % 2 == 0) for k in range(10)]
    refused = aggregate(faked, np.tile([1.0, 0.0], (10, 1)), 0.5)
    assert not refused.match and refused.looks_fake and refused.fake_share == 0.5
    with pytest.raises(Exception, match="no face in any of the 2 sampled frames"):
        aggregate([Frame(0.0, False), Frame(0.2, False)], np.zeros((0, 2)), 0.5)


@pytest.mark.data
def test_real_people_in_clips(tmp_path):
    """LFW stills made into clips: the same person's other photo is accepted, another person's refused."""
    from engine import FaceVerifier

    root = face_data_dir() / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"shared face data not found at {root} (set FACE_DATA)")
    read = lambda p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)  # noqa: E731
    photo = root / "George_W_Bush" / "George_W_Bush_0001.jpg"
    same = write_clip(tmp_path / "same.mp4", moving(read(root / "George_W_Bush" / "George_W_Bush_0002.jpg")))
    other = write_clip(tmp_path / "other.avi", moving(read(root / "Tony_Blair" / "Tony_Blair_0001.jpg")))
    with FaceVerifier() as fv:
        accepted, refused = fv.verify_video(photo, same), fv.verify_video(photo, other)
    assert accepted.match and accepted.agree == 1.0 and accepted.median_similarity > fv.threshold
    assert not refused.match and refused.agree == 0.0 and refused.median_similarity < fv.threshold
