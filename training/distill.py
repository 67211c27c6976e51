"""Distillation from a face recognizer: relational (cached embeddings) and feature (a teacher run on each view).

Relational: the teacher file is an ``.npz`` with ``paths`` (relative image paths exactly as
in ``train/meta.json``) and ``embeddings`` (float32, (N, Dt), any Dt: a
128-d dlib descriptor works as well as a 512-d ArcFace). Only the *relations*
are matched: the student's cosine-similarity matrix among the batch's real
images with a teacher embedding is pulled towards the teacher's (MSE over the
off-diagonal entries), so the two embedding spaces need not share a dimension
or a rotation.

Feature: the student's identity vector, through a linear projection,
regresses the teacher's centred, normalised descriptor of the same augmented
view (:class:`FeatureProjection`); this transfers the teacher's accuracy
where matching relations alone did not, and needs no identity labels, so
unlabelled photos count too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TeacherError(ValueError):
    """A teacher file that cannot be used; the message names the file."""


def save_teacher(path: str | os.PathLike, paths: list[str], embeddings: np.ndarray) -> None:
    """Write a teacher file in the format :func:`load_teacher` reads (atomically)."""
    path = Path(path)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(paths):
        raise TeacherError(f"{path}: need embeddings of shape (len(paths), D), got {embeddings.shape}")
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, paths=np.asarray(paths, dtype=str), embeddings=embeddings)
    os.replace(tmp, path)


def load_teacher(path: str | os.PathLike, keys: list[str], center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Match teacher rows to training samples.

    ``keys`` are the samples' relative paths (as in meta.json). Returns
    ``(embeddings (M, Dt) float32 L2-normalised, index (len(keys),) int64)``
    with ``index[i] = -1`` where sample ``i`` has no teacher embedding.
    ``center`` subtracts the mean embedding first: dlib's raw descriptors sit
    in a narrow cone (cosine ~0.83 between *different* people on LFW, 0.95
    within a person), a structure no margin-based student can match; centred,
    different people are ~0 and one person ~0.7.
    Raises :class:`TeacherError` for a missing/unreadable file, missing
    arrays, mismatched lengths, non-finite values or no overlap at all.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "paths" not in data or "embeddings" not in data:
                raise TeacherError(f"{path}: needs arrays 'paths' and 'embeddings', has {sorted(data.files)}")
            paths = [str(p) for p in data["paths"]]
            emb = np.asarray(data["embeddings"], dtype=np.float32)
    except FileNotFoundError:
        raise TeacherError(f"{path}: no such teacher file") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, TeacherError):
            raise
        raise TeacherError(f"{path}: not a readable .npz ({exc})") from None
    if emb.ndim != 2 or emb.shape[0] != len(paths) or emb.shape[1] < 1:
        raise TeacherError(f"{path}: embeddings shape {emb.shape} does not match {len(paths)} paths")
    if not np.isfinite(emb).all():
        raise TeacherError(f"{path}: embeddings hold NaN or infinite values")
    row = {p.replace(os.sep, "/"): i for i, p in enumerate(paths)}
    index = np.array([row.get(k, -1) for k in keys], dtype=np.int64)
    if (index < 0).all():
        raise TeacherError(f"{path}: none of its {len(paths)} paths matches a training image "
                           f"(expected keys like {keys[0]!r})" if keys else f"{path}: no training images")
    if center:
        if len(emb) < 2:
            raise TeacherError(f"{path}: centring needs at least 2 embeddings, has {len(emb)}")
        emb = emb - emb.mean(0, keepdims=True)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise TeacherError(f"{path}: {int((norms == 0).sum())} embeddings are zero"
                           f"{' after centring' if center else ''}")
    return emb / norms, index


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between off-diagonal cosine-similarity matrices of matching rows.

    ``student`` (n, D) and ``teacher`` (n, Dt) hold the same n images; fewer
    than two images give a zero loss (still attached to the graph).
    """
    n = student.shape[0]
    if n < 2:
        return student.sum() * 0.0
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    return F.mse_loss((s @ s.t())[off], (t @ t.t())[off])


class FeatureProjection(nn.Module):
    """Student identity vector -> the teacher's descriptor space, for feature distillation.

    A linear map (training only, never exported) plus the teacher's mean
    descriptor, kept as a buffer so a resumed run centres exactly as before.
    Centring matters for the same reason as in :func:`load_teacher`: dlib's
    raw descriptors share one direction, which would dominate the cosine.
    """

    def __init__(self, student_dim: int, teacher_dim: int = 128, linear: bool = True):
        super().__init__()
        # linear=False: the student's identity vector is compared with the teacher's as it is (a
        # student initialised from the teacher, whose head already subtracts teacher_mean).
        self.linear = nn.Linear(student_dim, teacher_dim) if linear else None
        self.register_buffer("teacher_mean", torch.zeros(teacher_dim))

    def target(self, descriptors: torch.Tensor) -> torch.Tensor:
        return F.normalize(descriptors.float() - self.teacher_mean, dim=1)

    def forward(self, identity: torch.Tensor) -> torch.Tensor:
        return identity.float() if self.linear is None else self.linear(identity.float())

    def loss(self, projected: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Mean ``1 - cos`` between projected identity vectors (:meth:`forward`) and centred teacher descriptors."""
        if projected.shape[0] == 0:
            return projected.sum() * 0.0
        return (1.0 - (F.normalize(projected, dim=1) * self.target(descriptors)).sum(1)).mean()


def open_feature_teacher(name: str, device: torch.device) -> nn.Module:
    """The frozen teacher network for ``feature_teacher`` (only ``dlib`` so far)."""
    if name != "dlib":
        raise TeacherError(f"feature_teacher: unknown teacher {name!r}")
    from training.teachers.dlib_resnet import DlibResNet

    try:
        return DlibResNet().to(device)
    except (RuntimeError, ValueError) as exc:
        raise TeacherError(f"feature_teacher: {exc}") from None
