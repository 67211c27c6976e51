"""PK sampler: batch composition, determinism, resume position, DDP sharding."""
from __future__ import annotations

from collections import Counter

import pytest

from training.sampler import PKSampler, SamplerError


def make_labels(n_ids=12, reals=4, fakes=2, no_fake_ids=(), single_real_ids=()):
    """Per-sample identity and is_fake lists; some identities without fakes or with 1 real image."""
    identity, is_fake = [], []
    for i in range(n_ids):
        n_real = 1 if i in single_real_ids else reals
        n_fake = 0 if i in no_fake_ids else fakes
        identity += [i] * (n_real + n_fake)
        is_fake += [False] * n_real + [True] * n_fake
    return identity, is_fake


def test_batches_have_the_promised_composition():
    identity, is_fake = make_labels(no_fake_ids=(3,), single_real_ids=(5,))
    sampler = PKSampler(identity, is_fake, p=4, k=4, fake_share=0.25, seed=1, steps_per_epoch=20)
    assert (sampler.n_real, sampler.n_fake) == (3, 1)
    for batch in sampler:
        assert len(batch) == 16
        ids = [identity[i] for i, _ in batch]
        groups = Counter(ids)
        assert len(groups) == 4 and set(groups.values()) == {4}   # P distinct identities x K images
        assert 5 not in groups                                     # a single real image gives no positive
        for ident in groups:
            members = [i for i, _ in batch if identity[i] == ident]
            n_fake = sum(is_fake[i] for i in members)
            assert n_fake == (0 if ident == 3 else 1)              # identity 3 has no fakes: all real
            reals = [i for i in members if not is_fake[i]]
            assert len(set(reals)) == len(reals)                   # enough reals: no repeats
        # every image drawn is of its group's identity, fakes included (a fake of A sits with A)
        assert all(identity[i] in groups for i, _ in batch)


def test_every_batch_holds_fakes_of_its_identities():
    identity, is_fake = make_labels()
    sampler = PKSampler(identity, is_fake, p=3, k=6, fake_share=0.34, seed=0, steps_per_epoch=10)
    assert sampler.n_fake == 2
    for batch in sampler:
        fakes = [identity[i] for i, _ in batch if is_fake[i]]
        assert Counter(fakes) == Counter({ident: 2 for ident in set(identity[i] for i, _ in batch)})


def test_short_identities_are_padded_by_repeats():
    identity, is_fake = make_labels(n_ids=4, reals=2, fakes=1)
    sampler = PKSampler(identity, is_fake, p=2, k=6, fake_share=0.34, steps_per_epoch=3)
    for batch in sampler:
        assert len(batch) == 12
        for ident in {identity[i] for i, _ in batch}:
            members = [i for i, _ in batch if identity[i] == ident]
            assert sum(is_fake[i] for i in members) == 2 and len(members) == 6
            assert len({i for i in members if not is_fake[i]}) == 2  # both reals used before repeating


def test_zero_fake_share_gives_real_only_batches():
    identity, is_fake = make_labels()
    sampler = PKSampler(identity, is_fake, p=4, k=2, fake_share=0.0, steps_per_epoch=5)
    assert not any(is_fake[i] for batch in sampler for i, _ in batch)


def test_deterministic_per_seed_and_epoch():
    identity, is_fake = make_labels()
    a = PKSampler(identity, is_fake, p=4, k=4, seed=7)
    b = PKSampler(identity, is_fake, p=4, k=4, seed=7)
    assert a.epoch_batches(3) == b.epoch_batches(3)
    assert a.epoch_batches(3) != a.epoch_batches(4)
    assert a.epoch_batches(3) != PKSampler(identity, is_fake, p=4, k=4, seed=8).epoch_batches(3)
    seeds = [s for batch in a.epoch_batches(3) for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # one augmentation seed per drawn image


def test_an_epoch_visits_each_identity_once_when_it_divides():
    identity, is_fake = make_labels(n_ids=12)
    sampler = PKSampler(identity, is_fake, p=4, k=4, seed=0)
    assert len(sampler) == 3  # auto: 12 identities // 4
    seen = Counter(identity[i] for batch in sampler for i, _ in batch[::4])
    assert sorted(seen) == list(range(12)) and set(seen.values()) == {1}


def test_resume_position():
    identity, is_fake = make_labels()
    sampler = PKSampler(identity, is_fake, p=4, k=4, seed=3, steps_per_epoch=6)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=4)
    state = sampler.state_dict()
    other = PKSampler(identity, is_fake, p=4, k=4, seed=3, steps_per_epoch=6)
    other.load_state_dict(state)
    assert len(other) == 2
    assert list(other) == full[4:]
    with pytest.raises(SamplerError, match="seed"):
        PKSampler(identity, is_fake, p=4, k=4, seed=4, steps_per_epoch=6).load_state_dict(state)
    with pytest.raises(SamplerError, match="start step"):
        sampler.set_epoch(0, start=7)


def test_ranks_split_the_global_batches():
    identity, is_fake = make_labels(n_ids=16)
    single = PKSampler(identity, is_fake, p=4, k=4, seed=5, steps_per_epoch=6)
    ranks = [PKSampler(identity, is_fake, p=4, k=4, seed=5, rank=r, world_size=2, steps_per_epoch=3)
             for r in range(2)]
    assert [len(r) for r in ranks] == [3, 3]
    r0, r1 = (r.epoch_batches(1) for r in ranks)
    assert r0 != r1
    interleaved = [b for pair in zip(r0, r1) for b in pair]
    assert interleaved == single.epoch_batches(1)
    # auto length: every rank takes the same number of steps
    auto = [PKSampler(identity, is_fake, p=4, k=4, rank=r, world_size=2) for r in range(2)]
    assert len(auto[0]) == len(auto[1]) == 2


def test_bad_inputs():
    identity, is_fake = make_labels(n_ids=3)
    with pytest.raises(SamplerError, match="only 3 identities"):
        PKSampler(identity, is_fake, p=4, k=4)
    with pytest.raises(SamplerError, match="k >= 2"):
        PKSampler(identity, is_fake, p=2, k=1)
    with pytest.raises(SamplerError, match="leaves 1 real"):
        PKSampler(identity, is_fake, p=2, k=2, fake_share=0.5)
    with pytest.raises(SamplerError, match="rank"):
        PKSampler(identity, is_fake, p=2, k=2, rank=2, world_size=2)


def test_unlabelled_extras_are_appended_without_changing_the_labelled_batches():
    identity, is_fake = make_labels()
    plain = PKSampler(identity, is_fake, p=4, k=4, seed=3, steps_per_epoch=12)
    mixed = PKSampler(identity, is_fake, p=4, k=4, seed=3, steps_per_epoch=12, extra=5, extra_per_batch=3)
    n = len(identity)
    seen = Counter()
    for a, b in zip(plain.epoch_batches(1), mixed.epoch_batches(1)):
        assert b[:16] == a                                   # the labelled part is untouched
        extras = [i for i, _ in b[16:]]
        assert len(extras) == 3 and all(n <= i < n + 5 for i in extras)
        seen.update(extras)
    assert set(seen) == set(range(n, n + 5)) and max(seen.values()) - min(seen.values()) <= 1  # passes, not draws
    state = mixed.state_dict()
    with pytest.raises(SamplerError, match="extra_per_batch"):
        plain.load_state_dict(state)


def test_realness_rows_come_as_fake_and_source_pairs_from_their_own_stream():
    """Each realness group (one source video) gives one real and one fake to a batch; the labelled part is
    the same batch for batch as without them."""
    identity, is_fake = make_labels()
    n = len(identity)
    groups = [([n + 2 * g], [n + 2 * g + 1]) for g in range(5)]
    plain = PKSampler(identity, is_fake, p=4, k=4, seed=3, steps_per_epoch=6)
    mixed = PKSampler(identity, is_fake, p=4, k=4, seed=3, steps_per_epoch=6, realness_groups=groups,
                      realness_per_batch=4)
    seen = Counter()
    for a, b in zip(plain, mixed):
        assert b[:16] == a
        extra = [i for i, _ in b[16:]]
        assert len(extra) == 4
        for real, fake in zip(extra[::2], extra[1::2]):  # real first, then the fake made from it
            assert real >= n and (real - n) % 2 == 0 and fake == real + 1
            seen[real] += 1
    assert len(seen) == 5  # a pass over the groups before any repeats: 12 pairs cover all 5
    assert mixed.state_dict()["realness_per_batch"] == 4
    with pytest.raises(SamplerError, match="realness_per_batch"):
        plain.load_state_dict(mixed.state_dict())
