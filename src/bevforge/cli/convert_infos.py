"""`bevforge convert-infos IN.pkl --out OUT.json [--layout ...]`: official info pickles -> bevforge JSON."""

from __future__ import annotations

import argparse
import sys

HELP = "convert official BEVFormer / mmdet3d info pickles"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="nuscenes_infos_temporal_{train,val}.pkl or an mmdet3d info pickle")
    p.add_argument("--out", required=True, help="output infos_{split}.json")
    p.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "bevforge-v0", "mmdet3d-v1", "mmdet3d-v2"),
        help="bevforge-v0 = official BEVFormer (old mmdet3d boxes); default: auto-detect",
    )
    p.add_argument("--image-size", default="1600,900", help="raw camera W,H (pickles do not store it)")
    p.add_argument("--scene-gap-s", type=float, default=1.0, help="time gap that starts a new scene")


def run(args: argparse.Namespace) -> int:
    from bevforge.data.nuscenes.convert import convert_infos
    from bevforge.data.nuscenes.infos import save_infos

    try:
        w, h = (int(v) for v in args.image_size.split(","))
    except ValueError:
        print(f"error: --image-size expects W,H (e.g. 1600,900), got {args.image_size!r}", file=sys.stderr)
        return 2
    # InfoConvertError / InfoFormatError (InputErrors): one error line from cli/main.py
    info = convert_infos(args.input, args.layout, (w, h), args.scene_gap_s)
    path = save_infos(info, args.out)
    n_scenes = len({s["scene_token"] for s in info.samples})
    print(f"wrote {path} ({len(info.samples)} samples, {n_scenes} scenes, split {info.split!r})")
    return 0
