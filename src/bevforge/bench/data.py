"""`bevforge bench data CONFIG`: samples/s of our loader vs a naive PIL pipeline on the same data.

Ours: ``build_dataloader(cfg, split, train=True)`` (simplejpeg scale-on-decode, workers, prefetch).
Naive: one process, for every image of every frame ``PIL.Image.open -> convert('RGB') -> resize
(bilinear) -> numpy -> float normalise``, the same T x N images per sample. The first batch of ours
is warm-up (worker start) and not timed. Appends a table to ``benchmarks/results/data.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name or path")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", default="", help="default: data.train_split")
    p.add_argument("--batches", type=int, default=20, help="timed batches of our loader")
    p.add_argument("--naive-samples", type=int, default=8, help="samples through the naive PIL pipeline")
    p.add_argument("--out", default="benchmarks/results/data.md", help="markdown file to append to")


def naive_sample(sample_list: list[dict], data_root: Path, cameras, scale: float, mean, std) -> np.ndarray:
    from PIL import Image

    out = []
    for s in sample_list:
        for cam in cameras:
            c = s["cams"][cam]
            with Image.open(data_root / c["path"]) as im:
                im = im.convert("RGB").resize((int(c["width"] * scale), int(c["height"] * scale)))
                arr = np.asarray(im, dtype=np.float32)
            out.append((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return np.stack(out)


def run(args: argparse.Namespace) -> int:
    from bevforge.bench.results import append_result
    from bevforge.config import load_config
    from bevforge.data.loader import build_dataloader
    from bevforge.data.nuscenes.infos import load_infos

    cfg = load_config(args.config, args.overrides)  # ConfigError: reported by cli/main.py
    split = args.split or cfg.data.train_split
    loader = build_dataloader(cfg, split, train=True)
    it = iter(loader)
    first = next(it)
    t_frames, n_cams = first.num_frames, first.images.shape[2]
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch.batch_size
    ours = n / (time.perf_counter() - t0)

    d = cfg.data
    samples = load_infos(Path(d.info_dir) / f"infos_{split}.json").samples
    m = min(args.naive_samples, len(samples))
    t0 = time.perf_counter()
    for i in range(m):
        frames = [samples[max(0, i - k)] for k in range(t_frames)]  # same T x N images per sample
        naive_sample(frames, Path(d.data_root), d.cameras, d.img_scale, d.img_mean, d.img_std)
    naive = m / (time.perf_counter() - t0)

    table = (
        "| pipeline | samples/s | images/s | setup |\n|---|---|---|---|\n"
        f"| bevforge loader | {ours:.2f} | {ours * t_frames * n_cams:.1f} | workers={d.num_workers}, "
        f"batch={d.batch_size}, T={t_frames}, N={n_cams}, scale={d.img_scale}, "
        f"cache={bool(d.image_cache)} |\n"
        f"| naive PIL (1 proc) | {naive:.2f} | {naive * t_frames * n_cams:.1f} | same T x N images |\n\n"
        f"speed-up: {ours / naive:.2f}x; split {split}, {args.batches} timed batches"
    )
    print(table)
    path = append_result(args.out, f"data loader ({cfg.name})", "cpu", table)
    print(f"appended to {path}")
    return 0
