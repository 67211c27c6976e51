"""Video clips as inputs: sample frames, follow the face, decide per frame, and aggregate so one frame cannot flip it.

A clip is recognised by its container signature (MP4/MOV ``ftyp``, Matroska/
WebM, AVI), opened through OpenCV's FFmpeg (in the base install), checked
from its header before any frame is decoded (resolution, frame count,
duration), and read in order: frames are grabbed and only the sampled ones
(``fps`` per second, at most ``max_frames``) decoded. OpenCV applies the
rotation tag phones write (``CAP_PROP_ORIENTATION_AUTO``).

Each sampled frame goes through the runtime's own preprocessing (detection,
second look, alignment) and the model; frames without a face are counted,
not guessed. The clip's decision (:func:`aggregate`): the share of frames
with a face that match the reference, and the share that look fake.
A clip is accepted only when at least :data:`MIN_AGREE` of its faced frames
match and at most ``1 - MIN_AGREE`` look fake; a jump of the embedding
between consecutive frames (cosine under :data:`JUMP_COSINE`) is reported
as a possible change of person. These two numbers are a first rule, not yet
calibrated on validation clips (issue 29).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.preprocess import ImageError, NoFaceError

MAX_VIDEO_BYTES = 2 * 1024**3
MAX_VIDEO_PIXELS = 3840 * 2160      # 4K UHD per frame; an 8K clip is refused from its header
MAX_VIDEO_SECONDS = 600.0
DEFAULT_FPS = 5.0
DEFAULT_MAX_FRAMES = 60
MAX_FRAMES = 1000
MIN_AGREE = 2 / 3                   # share of faced frames that must match (and at most 1/3 may look fake)
JUMP_COSINE = 0.5                   # consecutive frames' embeddings under this: a possible change of person


class VideoError(ImageError):
    """A clip that cannot be used (not a video, empty, damaged, over a limit); the message names it."""


def is_video(head: bytes) -> bool:
    """Whether the first bytes are a video container: MP4/MOV (ftyp), Matroska/WebM (EBML), AVI (RIFF AVI)."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        return brand not in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heim", b"heis")
    return head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


def looks_like_video(path: str | os.PathLike) -> bool:
    """:func:`is_video` of a regular file's first bytes (False for anything unreadable: the image path says why)."""
    try:
        if not Path(path).is_file():
            return False
        with open(path, "rb") as f:
            return is_video(f.read(16))
    except OSError:
        return False


@dataclass
class ClipInfo:
    width: int
    height: int
    fps: float
    frames: int
    seconds: float


def probe(path: str | os.PathLike):
    """Open ``path`` and check its header; (capture, ClipInfo) or VideoError naming the problem."""
    import cv2

    from engine.files import FileRefused, check_regular

    source = str(path)
    try:
        check_regular(path, MAX_VIDEO_BYTES, "a video")
    except FileRefused as exc:
        raise VideoError(str(exc)) from None
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise VideoError(f"{source}: not a decodable video")
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps, frames = float(cap.get(cv2.CAP_PROP_FPS)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    info = ClipInfo(width, height, fps, frames, frames / fps if fps > 0 and frames > 0 else 0.0)
    problem = None
    if width <= 0 or height <= 0:
        problem = "no video stream (an audio-only file?)"
    elif width * height > MAX_VIDEO_PIXELS:
        problem = f"header says {width}x{height} per frame, over the {MAX_VIDEO_PIXELS:,} pixel limit"
    elif not (0 < fps <= 1000) or frames <= 0:
        problem = f"header says {frames} frames at {fps:g} fps: no frames to read"
    elif info.seconds > MAX_VIDEO_SECONDS:
        problem = f"header says {info.seconds:,.1f} s, over the {MAX_VIDEO_SECONDS:g} s limit"
    if problem:
        cap.release()
        raise VideoError(f"{source}: {problem}")
    return cap, info


def sample_frames(path: str | os.PathLike, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES):
    """(ClipInfo, [(seconds, RGB frame), ...]): ``fps`` frames per second of the clip, at most ``max_frames``,
    spread over the whole clip when it is longer; read in order (grab, decode only the kept ones)."""
    if not (0 < fps <= 60) or not math.isfinite(fps):
        raise ValueError(f"fps must be in (0, 60], got {fps}")
    if not 1 <= max_frames <= MAX_FRAMES:
        raise ValueError(f"frames must be in [1, {MAX_FRAMES}], got {max_frames}")
    cap, info = probe(path)
    try:
        step = max(1.0, info.fps / fps, info.frames / max_frames)
        wanted = sorted({min(info.frames - 1, int(round(k * step))) for k in range(int(info.frames / step) + 1)})
        wanted = wanted[:max_frames]
        out, index, keep = [], 0, set(wanted)
        while index <= wanted[-1]:
            if not cap.grab():
                break  # a stream shorter than its header: what was read is used
            if index in keep:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None and bgr.ndim == 3:
                    out.append((index / info.fps, np.ascontiguousarray(bgr[:, :, ::-1])))
            index += 1
    finally:
        cap.release()
    if not out:
        raise VideoError(f"{path}: no frame could be decoded (a damaged or truncated stream)")
    return info, out


@dataclass
class Frame:
    seconds: float
    face: bool
    similarity: float | None = None
    realness: float | None = None
    match: bool | None = None
    looks_fake: bool | None = None
    box: list[float] | None = None
    error: str | None = None


@dataclass
class ClipVerification:
    match: bool
    threshold: float
    frames: list[Frame]
    faced: int                      # frames with a face
    agree: float                    # share of faced frames that match
    fake_share: float               # share of faced frames that look fake
    median_similarity: float
    looks_fake: bool                # refused because frames look fake
    changes: list[float] = field(default_factory=list)  # times where the followed face's embedding jumps

    def to_dict(self) -> dict:
        return asdict(self)


def aggregate(frames: list[Frame], embeddings: np.ndarray, threshold: float) -> ClipVerification:
    """The clip's decision from its frames (see the module docstring); NoFaceError when no frame has a face."""
    faced = [f for f in frames if f.face]
    if not faced:
        raise NoFaceError(f"no face in any of the {len(frames)} sampled frames")
    agree = sum(f.match for f in faced) / len(faced)
    fake_share = sum(f.looks_fake for f in faced) / len(faced)
    emb = np.asarray(embeddings, np.float64)
    cos = (emb[1:] * emb[:-1]).sum(1) if len(emb) > 1 else np.zeros(0)
    changes = [round(faced[k + 1].seconds, 3) for k, c in enumerate(cos) if c < JUMP_COSINE]
    match = agree >= MIN_AGREE and fake_share <= 1 - MIN_AGREE
    return ClipVerification(match=bool(match), threshold=threshold, frames=frames, faced=len(faced), agree=agree,
                            fake_share=fake_share,
                            median_similarity=float(np.median([f.similarity for f in faced])),
                            looks_fake=bool(not match and fake_share > 1 - MIN_AGREE), changes=changes)
