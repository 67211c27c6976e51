"""P identities x K images per batch, with each identity's fakes mixed in.

Every batch holds ``p`` distinct identities with ``k`` images each: ``n_fake =
round(k * fake_share)`` fakes of that identity (where it has any) and the rest
real images, so each batch carries the hard negatives the fake-aware loss
needs (a fake of A next to real A). Only identities with at least two real
images are sampled (they are the ones that give a positive pair).

Batches are a pure function of ``(seed, epoch)``: every rank builds the same
global list and keeps every ``world_size``-th batch, and each image comes with
its own augmentation seed. ``state_dict`` / ``load_state_dict`` restore the
position inside an epoch, so a resumed run sees exactly the batches an
uninterrupted run would have.
"""
from __future__ import annotations

from collections import defaultdict, deque
from typing import Iterator, Sequence

import numpy as np


class SamplerError(ValueError):
    """Data that cannot fill the promised batches."""


class PKSampler:
    """Batch sampler yielding lists of ``(dataset_index, augmentation_seed)``."""

    def __init__(self, identity: Sequence[int], is_fake: Sequence[bool], p: int, k: int, fake_share: float = 0.25,
                 seed: int = 0, rank: int = 0, world_size: int = 1, steps_per_epoch: int = 0,
                 extra: int = 0, extra_per_batch: int = 0, realness_groups: Sequence[tuple] = (),
                 realness_per_batch: int = 0):
        if p < 2 or k < 2:
            raise SamplerError(f"need p >= 2 and k >= 2, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise SamplerError(f"rank {rank} outside world of {world_size}")
        identity = np.asarray(identity, dtype=np.int64)
        is_fake = np.asarray(is_fake, dtype=bool)
        if identity.shape != is_fake.shape:
            raise SamplerError("identity and is_fake must have the same length")
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self.n_fake = int(round(k * fake_share))
        self.n_real = k - self.n_fake
        if self.n_real < 2:
            raise SamplerError(f"fake_share={fake_share} leaves {self.n_real} real image(s) of k={k}; need 2")
        reals: dict[int, list[int]] = defaultdict(list)
        fakes: dict[int, list[int]] = defaultdict(list)
        for index, (ident, fake) in enumerate(zip(identity.tolist(), is_fake.tolist())):
            (fakes if fake else reals)[ident].append(index)
        self.reals = {i: np.array(v) for i, v in reals.items() if len(v) >= 2}
        self.fakes = {i: np.array(v) for i, v in fakes.items() if i in self.reals}
        self.identities = np.array(sorted(self.reals), dtype=np.int64)
        if len(self.identities) < p:
            raise SamplerError(f"only {len(self.identities)} identities have 2+ real images; p={p} needs more")
        auto = len(self.identities) // (p * world_size)
        self.steps_per_epoch = steps_per_epoch or max(1, auto)
        # Unlabelled images (dataset indices len(identity) .. +extra) appended to
        # each batch, drawn from their own stream so the labelled part of a
        # batch does not depend on them.
        self.extra_start, self.extra, self.extra_per_batch = len(identity), extra, extra_per_batch if extra else 0
        # Realness rows (e.g. DFDC): each group is (real indices, fake indices) of one source video;
        # a batch takes realness_per_batch // 2 groups, one real and one fake of each, so every
        # fake comes with the real face it was made from.
        self.realness_groups = [(np.asarray(r), np.asarray(f)) for r, f in realness_groups if len(r) and len(f)]
        self.realness_per_batch = realness_per_batch if self.realness_groups else 0
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch to iterate and the step to start from (resume)."""
        if not 0 <= start <= self.steps_per_epoch:
            raise SamplerError(f"start step {start} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start = epoch, start

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "p": self.p, "k": self.k,
                "n_fake": self.n_fake, "steps_per_epoch": self.steps_per_epoch, "world_size": self.world_size,
                "extra_per_batch": self.extra_per_batch, "realness_per_batch": self.realness_per_batch}

    def load_state_dict(self, state: dict) -> None:
        state.setdefault("extra_per_batch", 0)  # checkpoints from before unlabelled images
        state.setdefault("realness_per_batch", 0)  # ... and before realness rows
        for key in ("seed", "p", "k", "n_fake", "steps_per_epoch", "world_size", "extra_per_batch",
                    "realness_per_batch"):
            if state[key] != getattr(self, key):
                raise SamplerError(f"sampler state was saved with {key}={state[key]}, "
                                   f"this run has {getattr(self, key)}; resume needs the same value")
        self.set_epoch(state["epoch"], state["start"])

    def _pick(self, rng: np.random.Generator, pool: np.ndarray, n: int) -> list[int]:
        """n members of pool: all distinct while they last, then drawn with replacement."""
        if n <= len(pool):
            return rng.choice(pool, n, replace=False).tolist()
        return rng.permutation(pool).tolist() + rng.choice(pool, n - len(pool), replace=True).tolist()

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of ``epoch`` (all of them, from step 0)."""
        rng = np.random.default_rng([self.seed, epoch])
        extra_rng = np.random.default_rng([self.seed, epoch, 1])
        realness_rng = np.random.default_rng([self.seed, epoch, 2])
        extra_order: deque = deque()
        realness_order: deque = deque()
        order: deque = deque()
        batches = []
        for _ in range(self.steps_per_epoch * self.world_size):
            chosen: list[int] = []
            held = []
            while len(chosen) < self.p:
                if not order:  # a fresh pass over the identities
                    order.extend(rng.permutation(self.identities).tolist())
                ident = order.popleft()
                if ident in chosen:  # pass boundary: keep it for the next batch
                    held.append(ident)
                else:
                    chosen.append(ident)
            order.extendleft(reversed(held))
            indices = []
            for ident in chosen:
                fakes = self.fakes.get(ident)
                n_fake = self.n_fake if fakes is not None and len(fakes) else 0
                indices += self._pick(rng, self.reals[ident], self.k - n_fake)
                if n_fake:
                    indices += self._pick(rng, fakes, n_fake)
            seeds = rng.integers(0, 2**62, len(indices)).tolist()
            batch = list(zip(indices, seeds))
            for _ in range(self.extra_per_batch):
                if not extra_order:
                    extra_order.extend((self.extra_start + extra_rng.permutation(self.extra)).tolist())
                batch.append((extra_order.popleft(), int(extra_rng.integers(0, 2**62))))
            for _ in range(self.realness_per_batch // 2):
                if not realness_order:
                    realness_order.extend(realness_rng.permutation(len(self.realness_groups)).tolist())
                reals, fakes = self.realness_groups[realness_order.popleft()]
                for pool in (reals, fakes):
                    batch.append((int(realness_rng.choice(pool)), int(realness_rng.integers(0, 2**62))))
            batches.append(batch)
        return batches[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self.epoch_batches(self.epoch)[self.start:]
