"""Fake-aware triplet losses and the optional additive-margin softmax head.

The label space has two parts per sample: the identity whose face the image
shows, and whether the image is a fake. The pair rule, in one place
(:func:`pair_masks`):

- positive: same identity AND both real;
- negative: different identity OR exactly one of the two is a fake (a fake of
  A is a negative for a real image of A, never its positive);
- two fakes of the same identity: ``fake_fake`` decides: ``"ignore"`` (neither,
  default), ``"positive"`` (the reference solution's "fakes are their own
  class") or ``"negative"``.

Distances are cosine distances ``1 - cos`` between L2-normalised embeddings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FAKE_FAKE_RULES = ("ignore", "positive", "negative")


def pair_masks(identity: torch.Tensor, is_fake: torch.Tensor, fake_fake: str = "ignore"):
    """Boolean (B, B) masks ``(positive, negative)``; the diagonal is in neither."""
    if fake_fake not in FAKE_FAKE_RULES:
        raise ValueError(f"fake_fake must be one of {FAKE_FAKE_RULES}, got {fake_fake!r}")
    identity = identity.view(-1)
    is_fake = is_fake.view(-1).bool()
    same_id = identity[:, None] == identity[None, :]
    both_real = ~is_fake[:, None] & ~is_fake[None, :]
    both_fake = is_fake[:, None] & is_fake[None, :]
    one_fake = is_fake[:, None] ^ is_fake[None, :]
    not_self = ~torch.eye(len(identity), dtype=torch.bool, device=identity.device)
    positive = same_id & both_real & not_self
    negative = ~same_id | one_fake
    if fake_fake == "positive":
        positive = positive | (same_id & both_fake & not_self)
    elif fake_fake == "negative":
        negative = negative | (same_id & both_fake & not_self)
    return positive, negative


def cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) L2-normalised -> (B, B) distances ``1 - cos`` in [0, 2]."""
    return (1.0 - embeddings @ embeddings.t()).clamp(min=0.0, max=2.0)


def batch_hard_triplet_loss(embeddings, identity, is_fake, margin: float = 0.2, fake_fake: str = "ignore"):
    """Per anchor: hardest positive vs hardest negative (Hermans et al. 2017).

    Anchors without a positive or without a negative are skipped. Returns
    ``(loss, stats)``; ``stats`` holds the share of active anchors and mean
    hardest distances (floats, for logging).
    """
    dist = cosine_distance(embeddings.float())
    positive, negative = pair_masks(identity, is_fake, fake_fake)
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0, {"active": 0.0, "d_ap": 0.0, "d_an": 0.0}
    d_ap = torch.where(positive, dist, torch.full_like(dist, -1.0)).amax(1)
    d_an = torch.where(negative, dist, torch.full_like(dist, 3.0)).amin(1)
    per_anchor = F.relu(d_ap - d_an + margin)[valid]
    stats = {"active": (per_anchor > 0).float().mean().item(),
             "d_ap": d_ap[valid].mean().item(), "d_an": d_an[valid].mean().item()}
    return per_anchor.mean(), stats


def semi_hard_triplet_loss(embeddings, identity, is_fake, margin: float = 0.2, fake_fake: str = "ignore"):
    """Per (anchor, positive): the closest negative farther than the positive (FaceNet).

    Where no negative is farther than the positive, the farthest negative is
    used (as TensorFlow Addons does), which keeps early training from
    collapsing onto the hardest, possibly mislabelled, negatives. Note that a
    fake lying closer to the anchor than its positive is then not scored while
    a farther negative exists; batch-hard (the default) always scores it.
    """
    dist = cosine_distance(embeddings.float())
    positive, negative = pair_masks(identity, is_fake, fake_fake)
    has_neg = negative.any(1)
    pair = positive & has_neg[:, None]  # (anchor, positive) pairs to score
    if not pair.any():
        return embeddings.sum() * 0.0, {"active": 0.0, "d_ap": 0.0, "d_an": 0.0}
    d_ap = dist[:, :, None]   # [a, p, 1]
    d_n = dist[:, None, :]    # [a, 1, n]
    neg = negative[:, None, :]
    outside = neg & (d_n > d_ap)
    semi = torch.where(outside, d_n, torch.full_like(d_n, 3.0)).amin(2)        # [a, p]
    easiest = torch.where(neg, d_n, torch.full_like(d_n, -1.0)).amax(2)        # [a, 1]
    d_an = torch.where(outside.any(2), semi, easiest.expand_as(semi))
    per_pair = F.relu(dist - d_an + margin)[pair]
    stats = {"active": (per_pair > 0).float().mean().item(),
             "d_ap": dist[pair].mean().item(), "d_an": d_an[pair].mean().item()}
    return per_pair.mean(), stats


MINING = {"batch_hard": batch_hard_triplet_loss, "semi_hard": semi_hard_triplet_loss}


def triplet_loss(embeddings, identity, is_fake, mining: str = "batch_hard", margin: float = 0.2,
                 fake_fake: str = "ignore"):
    if mining not in MINING:
        raise ValueError(f"mining must be one of {sorted(MINING)}, got {mining!r}")
    return MINING[mining](embeddings, identity, is_fake, margin=margin, fake_fake=fake_fake)


class MarginSoftmaxHead(nn.Module):
    """CosFace (``cos - m``) or ArcFace (``cos(theta + m)``) logits over classes.

    Classes are the label space's (identity, is_fake) groups, so each
    identity's fakes form their own class. Auxiliary only: the embedding that
    ships is the trunk's, this head is dropped at export.
    """

    def __init__(self, embedding_dim: int, num_classes: int, kind: str = "cosface", scale: float = 32.0,
                 margin: float = 0.35):
        super().__init__()
        if kind not in ("cosface", "arcface"):
            raise ValueError(f"kind must be cosface or arcface, got {kind!r}")
        self.kind, self.scale, self.margin = kind, scale, margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        cos = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        target = cos.gather(1, labels[:, None])
        if self.kind == "cosface":
            adjusted = target - self.margin
        else:
            theta = torch.acos(target)
            # Past pi - m, cos(theta + m) would rise again; fall back to CosFace-style there.
            adjusted = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                   target - self.margin * math.sin(self.margin))
        logits = cos.scatter(1, labels[:, None], adjusted)
        return logits * self.scale

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(embeddings, labels), labels)
