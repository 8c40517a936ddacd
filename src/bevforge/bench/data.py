"""`bevforge bench data CONFIG`: samples/s of our loader vs a naive PIL pipeline on the same data.

Ours: ``build_dataloader(cfg, split, train=True)`` (simplejpeg scale-on-decode, workers, prefetch).
Naive: one process, for every image of every frame ``PIL.Image.open -> convert('RGB')``, then the
recipe's image geometry the way the official code does it in PIL, ``-> numpy -> float normalise``, the
same T x N images per sample:

- ``data.img_scale`` recipes (BEVFormer): ``resize`` (bilinear) by ``img_scale``;
- ``data.input_size`` / ``data.img_aug`` recipes (BEVDet, official ``PrepareImageInputs.img_transform``):
  ``resize`` to the sampled scale, ``crop`` to ``input_size``, horizontal flip, ``rotate``, with the
  training draws of :func:`bevforge.data.augment_image.sample_image_aug` (one per sample).

The first batch of ours is warm-up (worker start) and not timed. Appends a table to
``benchmarks/results/data.md``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name or path")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", default="", help="default: data.train_split")
    p.add_argument("--batches", type=int, default=20, help="timed batches of our loader")
    p.add_argument("--naive-samples", type=int, default=8, help="samples through the naive PIL pipeline")
    p.add_argument("--out", default="benchmarks/results/data.md", help="markdown file to append to")


def naive_sample(
    sample_list: list[dict], data_root: Path, cameras, scale: float, mean, std, aug_spec=None, rng=None
) -> np.ndarray:
    """``[T*N, H, W, 3]`` float32: PIL decode + the img_scale resize, or, with ``aug_spec``
    (:class:`bevforge.data.augment_image.ImageAugSpec`), PIL resize + crop + flip + rotate to its
    ``input_hw`` (the draw from ``rng``, one per sample as the dataset does)."""
    from PIL import Image

    from bevforge.data.augment_image import sample_image_aug

    out = []
    augs: dict[str, object] = {}
    for s in sample_list:
        for cam in cameras:
            c = s["cams"][cam]
            raw_wh = (int(c["width"]), int(c["height"]))
            with Image.open(data_root / c["path"]) as im:
                im = im.convert("RGB")
                if aug_spec is None:
                    im = im.resize((int(raw_wh[0] * scale), int(raw_wh[1] * scale)))
                else:
                    aug = augs.setdefault(cam, sample_image_aug(raw_wh, aug_spec, rng))  # same for all frames
                    fh, fw = aug_spec.input_hw
                    im = im.resize((int(raw_wh[0] * aug.resize), int(raw_wh[1] * aug.resize)))
                    x0, y0 = aug.crop_xy
                    im = im.crop((x0, y0, x0 + fw, y0 + fh))
                    if aug.flip:
                        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    im = im.rotate(aug.rot_deg)
                arr = np.asarray(im, dtype=np.float32)
            out.append((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return np.stack(out)


def run(args: argparse.Namespace) -> int:
    from bevforge.bench.results import append_result
    from bevforge.config import load_config
    from bevforge.data.augment_image import ImageAugSpec
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
    finish_note = ""
    if first.images.dtype == torch.uint8:  # data.images_on_device: the tail the training step runs
        from bevforge.bench.infer import time_frames
        from bevforge.data.device_images import finish_images
        from bevforge.ops.dispatch import kernels

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        on_dev = first.to(device)
        timings = []
        for label, choice in (("torch path", "reference"), ("Triton kernel", "auto")):
            if choice == "auto" and device.type != "cuda":
                continue  # the kernel runs on CUDA only
            with kernels(choice):  # one warm-up call (Triton compiles), median of 3
                t = time_frames(lambda: finish_images(on_dev, cfg.data), 1, 3, device.type)
            timings.append(f"{t['p50'] / first.batch_size:.2f} ms/sample ({label})")
        finish_note = f", finished in the training step on {device.type}: " + " vs ".join(timings)

    d = cfg.data
    samples = load_infos(Path(d.info_dir) / f"infos_{split}.json").samples
    m = min(args.naive_samples, len(samples))
    spec = ImageAugSpec.from_config(d, train=True)
    if spec is not None and not spec.input_hw:  # img_aug without input_size: the img_scale size
        spec = replace(spec, input_hw=(int(first.img_hw[0]), int(first.img_hw[1])))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(m):
        frames = [samples[max(0, i - k)] for k in range(t_frames)]  # same T x N images per sample
        naive_sample(frames, Path(d.data_root), d.cameras, d.img_scale, d.img_mean, d.img_std, spec, rng)
    naive = m / (time.perf_counter() - t0)
    geometry = (
        f"scale={d.img_scale}"
        if spec is None
        else f"input_size={tuple(spec.input_hw)}, img_aug={bool(d.img_aug)} (resize+crop+flip+rotate)"
    )

    table = (
        "| pipeline | samples/s | images/s | setup |\n|---|---|---|---|\n"
        f"| bevforge loader | {ours:.2f} | {ours * t_frames * n_cams:.1f} | workers={d.num_workers}, "
        f"decode_threads={d.decode_threads}, "
        f"batch={d.batch_size}, T={t_frames}, N={n_cams}, {geometry}, "
        f"cache={bool(d.image_cache)}, images_on_device={d.images_on_device}{finish_note} |\n"
        f"| naive PIL (1 proc) | {naive:.2f} | {naive * t_frames * n_cams:.1f} | same T x N images, "
        f"{geometry} |\n\n"
        f"speed-up: {ours / naive:.2f}x; split {split}, {args.batches} timed batches"
    )
    print(table)
    path = append_result(args.out, f"data loader ({cfg.name})", "cpu", table)
    print(f"appended to {path}")
    return 0
