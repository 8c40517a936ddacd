"""`bevforge synth --out DIR`: write a synthetic nuScenes-format dataset (tables, cameras, map, CAN bus)."""

from __future__ import annotations

import argparse

HELP = "generate a synthetic nuScenes-format dataset"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size must look like 400x225 (WIDTHxHEIGHT), got {text!r}"
        ) from None
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="dataset root to write (the nuScenes dataroot)")
    p.add_argument("--scenes", type=int, default=10, help="number of scenes (default 10)")
    p.add_argument(
        "--samples-per-scene", type=int, default=20, help="key frames per scene at 2 Hz (default 20)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset")
    p.add_argument(
        "--size", type=_size, default=(400, 225), help="camera image WIDTHxHEIGHT (default 400x225)"
    )
    p.add_argument("--version", default="v1.0-mini", choices=["v1.0-mini", "v1.0-trainval"])
    p.add_argument(
        "--workers", type=int, default=0, help="processes (default: one per CPU, at most one per scene)"
    )


def run(args: argparse.Namespace) -> int:
    from bevforge.data.synthetic import generate

    generate(  # SynthSettingsError (an InputError): one error line from cli/main.py
        args.out,
        num_scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        seed=args.seed,
        image_wh=args.size,
        version=args.version,
        workers=args.workers or None,
    )
    return 0
