"""Fake-aware triplet losses, the margin softmax head and relational distillation, on hand-built embeddings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.distill import TeacherError, load_teacher, relational_loss, save_teacher
from training.losses import (MarginSoftmaxHead, batch_hard_triplet_loss, cosine_distance, pair_masks,
                             semi_hard_triplet_loss, triplet_loss)

LOSSES = [batch_hard_triplet_loss, semi_hard_triplet_loss]


def unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def labels(identity, fake):
    return torch.tensor(identity), torch.tensor(fake, dtype=torch.bool)


def test_pair_rule():
    # 0,1: real A   2,3: fakes of A   4: real B   5: fake of B
    identity, fake = labels([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 1])
    pos, neg = pair_masks(identity, fake)
    assert pos[0, 1] and pos[1, 0]                    # same identity, both real
    assert not pos[0, 2] and neg[0, 2]                 # a fake of A is a negative for real A
    assert neg[0, 4] and neg[0, 5] and neg[2, 4]      # different identity, real or fake
    assert not pos[2, 3] and not neg[2, 3]            # fake-fake, same identity: ignored by default
    assert not pos.diagonal().any() and not neg.diagonal().any()
    assert not (pos & neg).any()
    pos_p, neg_p = pair_masks(identity, fake, fake_fake="positive")
    assert pos_p[2, 3] and not neg_p[2, 3] and not pos_p[0, 2]
    pos_n, neg_n = pair_masks(identity, fake, fake_fake="negative")
    assert neg_n[2, 3] and not pos_n[2, 3]
    with pytest.raises(ValueError, match="fake_fake"):
        pair_masks(identity, fake, fake_fake="maybe")


def test_cosine_distance():
    emb = unit([1, 0], [0, 1], [-1, 0])
    torch.testing.assert_close(cosine_distance(emb), torch.tensor([[0., 1, 2], [1, 0, 1], [2, 1, 0]]))


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_zero_when_every_margin_is_satisfied(loss_fn):
    # Real A twice at e1, fake of A at e3, real B twice at e2: d(pos) = 0, d(neg) = 1 > margin.
    emb = unit([1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0]).requires_grad_()
    identity, fake = labels([0, 0, 0, 1, 1], [0, 0, 1, 0, 0])
    loss, stats = loss_fn(emb, identity, fake, margin=0.5)
    assert loss.item() == 0.0
    assert stats["active"] == 0.0


def test_fake_of_a_identical_to_real_a_costs_the_margin():
    # The fake sits exactly on real A: it is a negative at distance 0, so each real-A anchor pays the margin.
    emb = unit([1, 0], [1, 0], [1, 0], [0, 1], [0, 1])
    identity, fake = labels([0, 0, 0, 1, 1], [0, 0, 1, 0, 0])
    loss, _ = batch_hard_triplet_loss(emb, identity, fake, margin=0.3)
    # anchors 0,1 (real A): hardest negative = the fake at d=0 -> 0.3; anchors 3,4 (real B): positives
    # at 0, negatives at distance 1 -> 0. Mean over the 4 anchors.
    assert loss.item() == pytest.approx(0.15, abs=1e-6)


def test_semi_hard_scores_a_fake_just_beyond_the_positive():
    # Positive of anchor 0 at d = 0.1, its fake at d = 0.2 (inside the margin), B at d = 1.
    # Semi-hard picks the fake (closest negative beyond the positive): 0.1 - 0.2 + 0.3 = 0.2.
    # (A fake *closer* than the positive is skipped by semi-hard mining while a farther negative
    # exists; batch_hard, the default, always scores it.)
    def at(d):
        return [1 - d, math.sqrt(1 - (1 - d) ** 2), 0.0]
    emb = torch.tensor([[1.0, 0.0, 0.0], at(0.1), [at(0.2)[0], -at(0.2)[1], 0.0], [0.0, 0.0, 1.0]])
    identity, fake = labels([0, 0, 0, 1], [0, 0, 1, 0])
    dist = cosine_distance(emb)
    loss, _ = semi_hard_triplet_loss(emb, identity, fake, margin=0.3)
    # pair (1, 0): d_ap = 0.1; negatives of 1: fake at d[1,2], B at 1.
    d12 = dist[1, 2].item()
    second = 0.1 - (d12 if d12 > 0.1 else 1.0) + 0.3
    assert loss.item() == pytest.approx((0.2 + max(0.0, second)) / 2, abs=1e-5)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("rule", ["ignore", "negative"])
def test_fake_of_a_is_never_a_positive_of_a(loss_fn, rule):
    # Real A's are together, the fake of A is opposite them (distance 2), B is orthogonal.
    # Were the fake a positive of A, the hardest positive would be at 2 and the loss large.
    emb = unit([1, 0], [1, 0], [-1, 0], [0, 1], [0, 1])
    identity, fake = labels([0, 0, 0, 1, 1], [0, 0, 1, 0, 0])
    loss, _ = loss_fn(emb, identity, fake, margin=0.5, fake_fake=rule)
    assert loss.item() == 0.0


def test_fake_fake_positive_rule_pulls_fakes_of_one_identity_together():
    # Two fakes of A far apart: only the "positive" rule makes them an anchor/positive pair.
    emb = unit([1, 0], [1, 0], [0, 1], [0, -1], [-1, 0], [-1, 0])
    identity, fake = labels([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0])
    ignored, _ = batch_hard_triplet_loss(emb, identity, fake, margin=0.1)
    positive, _ = batch_hard_triplet_loss(emb, identity, fake, margin=0.1, fake_fake="positive")
    assert ignored.item() == 0.0
    assert positive.item() > 0.0


def test_batch_hard_value_by_hand():
    # Anchor 0 (A): positive 1 at angle 60 deg (d = 0.5), negatives: B at 90 deg (d = 1), fake of A at 45 deg.
    c, s = math.cos(math.pi / 3), math.sin(math.pi / 3)
    r = math.sqrt(0.5)
    emb = unit([1, 0], [c, s], [r, r], [0, 1])
    identity, fake = labels([0, 0, 0, 1], [0, 0, 1, 0])
    loss, stats = batch_hard_triplet_loss(emb, identity, fake, margin=0.2)
    d = cosine_distance(emb)
    # anchor 0: d_ap = d[0,1] = 0.5, d_an = min(d[0,2], d[0,3]) = 1 - cos 45
    # anchor 1: d_ap = 0.5, d_an = min(d[1,2], d[1,3]) = 1 - cos 15
    # anchors 2 (fake, no positive) and 3 (B, no positive) are skipped.
    expected = (max(0.0, 0.5 - float(d[0, 2]) + 0.2) + max(0.0, 0.5 - float(d[1, 2]) + 0.2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["d_ap"] == pytest.approx(0.5, abs=1e-6)


def test_semi_hard_prefers_negatives_beyond_the_positive():
    # Anchor 0 with positive at d = 0.5; negatives at d = 0.3 (hard) and d = 0.6 (semi-hard).
    # Semi-hard uses 0.6 -> 0.5 - 0.6 + 0.2 = 0.1; batch-hard would use 0.3 -> 0.4.
    def at(d):
        return [1 - d, math.sqrt(1 - (1 - d) ** 2)]
    emb = torch.tensor([[1.0, 0.0, 0.0], [at(0.5)[0], at(0.5)[1], 0.0], [at(0.3)[0], 0.0, at(0.3)[1]],
                        [at(0.6)[0], 0.0, -at(0.6)[1]]])
    identity, fake = labels([0, 0, 1, 2], [0, 0, 0, 0])
    dist = cosine_distance(emb)
    assert dist[0, 1].item() == pytest.approx(0.5, abs=1e-6)
    semi, _ = semi_hard_triplet_loss(emb, identity, fake, margin=0.2)
    # pair (0,1): semi-hard negative 3 at 0.6 -> 0.1; pair (1,0): d_ap = 0.5, negatives of 1 at d[1,2], d[1,3]
    d12, d13 = dist[1, 2].item(), dist[1, 3].item()
    beyond = [d for d in (d12, d13) if d > 0.5]
    second = 0.5 - (min(beyond) if beyond else max(d12, d13)) + 0.2
    assert semi.item() == pytest.approx((0.1 + max(0.0, second)) / 2, abs=1e-5)
    hard, _ = batch_hard_triplet_loss(emb, identity, fake, margin=0.2)
    assert hard.item() > semi.item()


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_no_valid_anchor_gives_zero_with_graph(mining):
    emb = unit([1, 0], [0, 1]).requires_grad_()
    loss, stats = triplet_loss(emb, *labels([0, 1], [0, 0]), mining=mining)
    assert loss.item() == 0.0 and stats["active"] == 0.0
    loss.backward()  # still part of the graph: a step with no triplet must not crash training
    assert emb.grad is not None


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_gradient_moves_embeddings_the_right_way(mining):
    raw = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.9, 0.1], [0.0, 1.0]], requires_grad=True)
    identity, fake = labels([0, 0, 0, 1], [0, 0, 1, 0])
    opt = torch.optim.SGD([raw], lr=0.1)
    before, _ = triplet_loss(F.normalize(raw, dim=1), identity, fake, mining=mining, margin=0.3)
    for _ in range(20):
        loss, _ = triplet_loss(F.normalize(raw, dim=1), identity, fake, mining=mining, margin=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, _ = triplet_loss(F.normalize(raw, dim=1), identity, fake, mining=mining, margin=0.3)
    assert after.item() < before.item()
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(F.normalize(raw, dim=1), identity, fake, mining="easy")


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_head_logits(kind):
    head = MarginSoftmaxHead(2, 3, kind=kind, scale=10.0, margin=0.3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    emb = unit([math.cos(0.2), math.sin(0.2)])
    logits = head(emb, torch.tensor([0]))
    expected_target = math.cos(0.2) - 0.3 if kind == "cosface" else math.cos(0.2 + 0.3)
    torch.testing.assert_close(logits[0, 0], torch.tensor(10 * expected_target), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0, 1], torch.tensor(10 * math.sin(0.2)), rtol=0, atol=1e-5)
    # The margin makes the true class harder: the loss exceeds plain softmax's.
    plain = F.cross_entropy(10 * F.linear(emb, head.weight), torch.tensor([0]))
    assert head.loss(emb, torch.tensor([0])).item() > plain.item()


def test_relational_loss_ignores_dimension_and_rotation():
    g = torch.Generator().manual_seed(0)
    student = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    teacher = torch.cat([student, torch.zeros(6, 8)], 1) @ q * 3.0  # other dim, rotated, scaled
    assert relational_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(6, 16, generator=g)
    assert relational_loss(student, other).item() > 0.01
    single = student[:1].clone().requires_grad_()
    assert relational_loss(single, teacher[:1]).item() == 0.0


def test_relational_loss_value():
    student = unit([1, 0], [0, 1])
    teacher = unit([1, 0], [1, 1])
    # off-diagonal similarities: student 0, teacher cos 45 -> MSE = 0.5
    assert relational_loss(student, teacher).item() == pytest.approx(0.5, abs=1e-6)


def test_teacher_file_round_trip(tmp_path):
    path = tmp_path / "teacher.npz"
    save_teacher(path, ["00001/0.jpg", "00002/0.jpg"], np.array([[3.0, 4.0], [0.0, 2.0]]))
    emb, index = load_teacher(path, ["00002/0.jpg", "00003/1.jpg", "00001/0.jpg"], center=False)
    assert index.tolist() == [1, -1, 0]
    np.testing.assert_allclose(emb, [[0.6, 0.8], [0.0, 1.0]], rtol=0, atol=1e-7)
    # centred: mean (1.5, 3) removed -> (1.5, 1) and (-1.5, -1), then normalised
    centred, _ = load_teacher(path, ["00001/0.jpg"])
    np.testing.assert_allclose(centred, [[0.83205, 0.5547], [-0.83205, -0.5547]], rtol=0, atol=1e-5)


def test_centring_turns_a_narrow_cone_into_usable_relations(tmp_path):
    # Teacher embeddings all near one direction (like dlib's): raw cosines are all high.
    rng = np.random.default_rng(0)
    emb = np.array([10.0, 0, 0, 0]) + rng.normal(size=(50, 4))
    save_teacher(tmp_path / "t.npz", [f"{i:05d}/0.jpg" for i in range(50)], emb)
    keys = [f"{i:05d}/0.jpg" for i in range(50)]
    raw, _ = load_teacher(tmp_path / "t.npz", keys, center=False)
    centred, _ = load_teacher(tmp_path / "t.npz", keys)
    off = ~np.eye(50, dtype=bool)
    assert (raw @ raw.T)[off].mean() > 0.9
    assert abs((centred @ centred.T)[off].mean()) < 0.1


@pytest.mark.parametrize("case,match", [
    ("missing", "no such teacher file"),
    ("keys", "needs arrays"),
    ("shape", "does not match"),
    ("nan", "NaN"),
    ("overlap", "none of its"),
    ("garbage", "not a readable"),
])
def test_teacher_file_errors_name_the_file(tmp_path, case, match):
    path = tmp_path / "t.npz"
    if case == "keys":
        np.savez(path, names=np.array(["a"]), embeddings=np.ones((1, 2), np.float32))
    elif case == "shape":
        np.savez(path, paths=np.array(["a", "b"]), embeddings=np.ones((3, 2), np.float32))
    elif case == "nan":
        np.savez(path, paths=np.array(["a"]), embeddings=np.array([[np.nan, 1.0]], np.float32))
    elif case == "overlap":
        save_teacher(path, ["x/1.jpg"], np.ones((1, 2)))
    elif case == "garbage":
        path.write_text("not an npz")
    with pytest.raises(TeacherError, match=match) as info:
        load_teacher(path, ["a", "b"] if case != "overlap" else ["y/1.jpg"])
    assert str(path) in str(info.value)
