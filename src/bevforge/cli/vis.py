"""`bevforge vis`: BEV + 6-camera pictures of predictions (green) and ground truth (red)."""

from __future__ import annotations

import argparse
import sys

HELP = "BEV + 6-camera pictures of predictions (green) and ground truth (red)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="nuScenes submission JSON (results_nusc.json)")
    p.add_argument(
        "--data-root", required=True, help="dataset root the info file's image paths are relative to"
    )
    p.add_argument("--info-file", required=True, help="infos_<split>.json the results were made on")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", nargs="+", default=None, metavar="TOKEN", help="sample tokens to draw")
    which.add_argument(
        "--scene", default=None, metavar="NAME", help="draw every sample of this scene, in order"
    )
    p.add_argument("--score-thr", type=float, default=0.3, help="hide predictions scoring below this")
    p.add_argument("--max-samples", type=int, default=None, help="draw at most this many samples")
    p.add_argument("--out", required=True, help="output folder: <token>.png per sample")
    p.add_argument("--video", action="store_true", help="also write a video (MP4 with OpenCV, else GIF)")


def run(args: argparse.Namespace) -> int:
    from bevforge.viz.results import VisInputError, render_results

    try:
        paths = render_results(
            args.results,
            args.info_file,
            args.data_root,
            args.out,
            tokens=args.sample,
            score_thr=args.score_thr,
            scene=args.scene,
            video=args.video,
            max_samples=args.max_samples,
        )
    except (VisInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print("nothing drawn: no sample of the info file appears in the results", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} file(s) to {args.out}")
    return 0
