"""Samplers: resumable training order (DistributedSampler semantics), scene-aware eval sampling."""

from __future__ import annotations

import torch

from bevforge.data.loader import (
    SceneAwareDistributedSampler,
    SceneLaneBatchSampler,
    TrainSampler,
    assign_scenes,
)


def test_train_sampler_partitions_and_resumes():
    torch.manual_seed(0)
    ranks = [TrainSampler(10, num_replicas=3, rank=r, seed=1) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    lists = [list(s) for s in ranks]
    assert all(len(x) == 4 for x in lists)
    assert set(sum(lists, [])) == set(range(10))  # padded to 12 with repeats, every sample covered
    again = TrainSampler(10, 3, 1, seed=1)
    again.set_epoch(2)
    again.set_start_index(3)
    assert len(again) == 1 and list(again) == lists[1][3:]
    assert list(again) == lists[1]  # the start index applies to one epoch only
    other = TrainSampler(10, 3, 1, seed=1)
    other.set_epoch(3)
    assert list(other) != lists[1]


def test_assign_scenes_balances_by_samples():
    bins = assign_scenes([10, 9, 2, 2, 1], 2)
    loads = [sum([10, 9, 2, 2, 1][s] for s in b) for b in bins]
    assert sorted(loads) == [12, 12] and sorted(sum(bins, [])) == [0, 1, 2, 3, 4]


def test_scene_aware_sampler_keeps_scenes_whole_and_ordered():
    scene_of = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    per_rank = [list(SceneAwareDistributedSampler(scene_of, 2, r)) for r in range(2)]
    assert sorted(sum(per_rank, [])) == list(range(10))
    for order in per_rank:
        assert order == sorted(order)  # temporal order inside each rank
        scenes = {scene_of[i] for i in order}
        for s in scenes:  # whole scene on this rank
            assert [i for i in order if scene_of[i] == s] == [i for i, x in enumerate(scene_of) if x == s]


def test_lane_batches_follow_scenes():
    scene_of = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    batches = list(SceneLaneBatchSampler(scene_of, batch_size=2))
    assert sorted(i for b in batches for i in b) == list(range(9))
    for lane in range(2):
        seq = [b[lane] for b in batches if len(b) > lane]
        assert seq == sorted(seq)
    assert [len(b) for b in batches] == sorted((len(b) for b in batches), reverse=True)
