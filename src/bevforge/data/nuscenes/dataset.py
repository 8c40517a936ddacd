"""nuScenes-format dataset over ``infos_{split}.json``: a temporal queue of frames per item.

Shape letters: T frames (oldest first, current last), N cameras, H/W padded image size, M boxes,
S seg classes. ``__getitem__`` returns a dict that ``loader.collate`` stacks into a ``Batch``.

Temporal queue (official ``CustomNuScenesDataset.prepare_train_data``): for the current index i take
the ``queue_length`` previous indices ``i-q .. i-1``, shuffle them, drop the first, sort, append i ->
T = queue_length frames. History frames of another scene keep their own scene token (the model resets
on a change); indices < 0 become padding frames (``frame_valid=False``, zero images, scene token "").
Evaluation items hold only the current frame (T = 1).

Augmentation hooks (docs/CONTRACTS.md "Augmentation"): with an ``ImageAugSpec`` (``data.input_size`` /
``data.img_aug``) every camera image is resized/cropped/flipped/rotated to ``input_hw`` in one warp,
the same parameters for all frames of the item, and ``lidar2img`` gets the affine; with a ``BDASpec``
(training with ``data.bev_aug``) one BEV rotation/scale/flip per item moves the GT boxes and seg
targets and composes ``lidar2img`` / ``lidar2ego`` of every frame with ``inv(bda)``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bevforge.config import Config, ConfigError
from bevforge.data.augment_bev import BDASpec, bda_boxes, bda_calibration, bda_seg, sample_bda
from bevforge.data.augment_image import (
    ImageAug,
    ImageAugSpec,
    decode_wh,
    image_aug_matrix,
    lift_affine,
    sample_image_aug,
    source_scale,
    warp_image,
)
from bevforge.data.depth_targets import depth_map, load_lidar_points
from bevforge.data.image_io import ImageDecodeError, MissingImageError, read_image, target_size
from bevforge.data.nuscenes.decode_pool import DecodePool
from bevforge.data.nuscenes.image_cache import ImageCache
from bevforge.data.nuscenes.infos import load_infos
from bevforge.data.nuscenes.sample_table import SampleTable
from bevforge.data.transforms import (
    PHOTOMETRIC_IDENTITY,
    draw_photometric,
    padded_size,
    photometric_distortion,
    select_gt,
)


class NuScenesDataset(Dataset):
    def __init__(
        self,
        info_path: str | Path,
        data_root: str | Path,
        *,
        train: bool,
        cameras: Sequence[str],
        classes: Sequence[str],
        point_cloud_range: Sequence[float],
        img_scale: float = 0.5,
        pad_divisor: int = 32,
        img_mean: Sequence[float] = (123.675, 116.28, 103.53),
        img_std: Sequence[float] = (58.395, 57.12, 57.375),
        to_rgb: bool = True,
        queue_length: int = 3,
        photometric_aug: bool = True,
        with_seg: bool = False,
        seg_classes: Sequence[str] = (),
        bev_hw: tuple[int, int] = (50, 50),
        image_cache: str = "",
        nuscenes_version: str | None = None,
        filter_empty_gt: bool = True,
        image_aug: ImageAugSpec | None = None,
        bda: BDASpec | None = None,
        depth_stride: int = 0,
        images_on_device: bool = False,
        decode_threads: int = 0,
    ) -> None:
        info = load_infos(info_path, expect_version=nuscenes_version)
        if not info.samples:
            raise ValueError(f"{info_path}: the info file holds no samples; re-run `bevforge prepare`")
        self.split = info.split
        self.data_root = Path(data_root)
        self.train = train
        self.cameras = tuple(cameras)
        missing = [c for c in self.cameras if any(c not in s["cams"] for s in info.samples)]
        if missing:
            raise ValueError(f"{info_path}: cameras {missing} missing from some samples; fix data.cameras")
        self.classes = tuple(classes)
        # numpy arrays only (shared copy-on-write by workers); the dicts are dropped with `info`
        self.table = SampleTable.from_samples(info.samples, self.cameras, self.classes)
        self.pcr = tuple(float(v) for v in point_cloud_range)
        self.img_scale = float(img_scale)
        self.pad_divisor = int(pad_divisor)
        self.img_mean, self.img_std, self.to_rgb = tuple(img_mean), tuple(img_std), bool(to_rgb)
        self._mean_chw = torch.tensor(self.img_mean, dtype=torch.float32).view(3, 1, 1)  # [3, 1, 1]
        self._std_chw = torch.tensor(self.img_std, dtype=torch.float32).view(3, 1, 1)
        self.queue_length = max(1, int(queue_length)) if train else 1
        self.photometric_aug = bool(photometric_aug) and train
        # training only: uint8 images + photometric draws, finished on the device (data/device_images.py)
        self.images_on_device = bool(images_on_device) and train
        self.filter_empty_gt = bool(filter_empty_gt) and train
        self.seg = None
        if with_seg:
            from bevforge.data.map_targets import MapTargetBuilder

            self.seg = MapTargetBuilder(data_root, seg_classes, self.pcr, bev_hw)
        self.cache = (
            ImageCache(image_cache, self.split, self.cameras, self.img_scale) if image_cache else None
        )
        w0, h0 = target_size(*(int(v) for v in self.table.cam_wh[0, 0]), self.img_scale)
        self.img_hw = (h0, w0)  # valid (un-padded) size of every image of the split
        self.image_aug = image_aug
        if image_aug is not None:
            if not image_aug.input_hw:  # img_aug without input_size: augment around the img_scale size
                self.image_aug = image_aug = dataclasses.replace(image_aug, input_hw=(h0, w0))
            self.img_hw = (int(image_aug.input_hw[0]), int(image_aug.input_hw[1]))
            for wh in {tuple(int(v) for v in r) for r in self.table.cam_wh.reshape(-1, 2)}:
                image_aug.check_source(wh, f"{info_path}: camera image")
        self.bda = bda if train else None
        # depth supervision (BEVDet + model.bevdet.depth_loss_weight): per-cell lidar depth of the current
        # frame on the stride-`depth_stride` feature grid (data/depth_targets.py); 0 = off
        self.depth_stride = int(depth_stride)
        self.lidar_paths = np.array([], dtype=str)
        if self.depth_stride > 0:
            if self.pad_divisor % self.depth_stride:
                raise ConfigError(
                    f"data.pad_divisor={self.pad_divisor} is not a multiple of the depth-target stride "
                    f"{self.depth_stride} (model.bevdet.feat_downsample); make it one"
                )
            no_lidar = [s["token"] for s in info.samples if not s.get("lidar_path")]
            if no_lidar:
                raise ValueError(
                    f"{info_path}: {len(no_lidar)} samples without lidar_path (e.g. {no_lidar[0]}); depth "
                    "supervision needs it: re-run `bevforge prepare` or set model.bevdet.depth_loss_weight=0"
                )
            self.lidar_paths = np.array([s["lidar_path"] for s in info.samples])
        self._corrupt: list[str] = []  # appended from decode threads too (an atomic list append)
        self._reported: set[str] = set()
        self.decoder = DecodePool(decode_threads)  # data.decode_threads: an item's images in threads

    @classmethod
    def from_config(cls, cfg: Config, split: str, train: bool) -> NuScenesDataset:
        d = cfg.data
        if d.bev_aug and train and cfg.model.arch == "bevformer" and d.queue_length > 1:
            raise ConfigError(
                "data.bev_aug with model.arch='bevformer' and data.queue_length > 1: BEVFormer aligns its "
                "history BEV with can_bus ego motion, which does not see the BEV augmentation; set "
                "data.bev_aug=false or data.queue_length=1"
            )
        return cls(
            Path(d.info_dir) / f"infos_{split}.json",
            d.data_root,
            train=train,
            cameras=d.cameras,
            classes=d.classes,
            point_cloud_range=d.point_cloud_range,
            img_scale=d.img_scale,
            pad_divisor=d.pad_divisor,
            img_mean=d.img_mean,
            img_std=d.img_std,
            to_rgb=d.to_rgb,
            queue_length=d.queue_length,
            photometric_aug=d.photometric_aug,
            with_seg=d.with_seg,
            seg_classes=d.seg_classes,
            bev_hw=(cfg.model.bev_h, cfg.model.bev_w),
            image_cache=d.image_cache,
            nuscenes_version=d.version,
            image_aug=ImageAugSpec.from_config(d, train),
            bda=BDASpec.from_config(d, train),
            depth_stride=(
                cfg.model.bevdet.feat_downsample
                if train and cfg.model.arch == "bevdet" and cfg.model.bevdet.depth_loss_weight > 0
                else 0
            ),
            images_on_device=d.images_on_device,
            decode_threads=d.decode_threads,
        )

    # ---------------------------------------------------------------------------------- scenes

    def __len__(self) -> int:
        return len(self.table)

    @property
    def num_scenes(self) -> int:
        return int(self.table.scene_ids.max()) + 1

    def scene_of(self, index: int) -> int:
        """Scene id (0..num_scenes-1, in order of first appearance) of sample ``index``."""
        return int(self.table.scene_ids[index])

    def sample_token(self, index: int) -> str:
        return str(self.table.tokens[index])

    def queue_indices(self, index: int, rng: np.random.Generator) -> list[int]:
        """Official queue: previous ``q`` indices, shuffled, first dropped, sorted, then ``index``."""
        q = self.queue_length
        if q <= 1:
            return [index]
        history = list(range(index - q, index))
        rng.shuffle(history)
        return sorted(history[1:]) + [index]

    # ---------------------------------------------------------------------------------- frames

    @property
    def num_corrupt_images(self) -> int:
        """Images that failed to decode in training (each replaced by a black image)."""
        return len(self._corrupt)

    def _raw_wh(self, index: int, j: int) -> tuple[int, int]:
        """Camera ``j``'s image size in sample ``index``'s infos."""
        return int(self.table.cam_wh[index, j, 0]), int(self.table.cam_wh[index, j, 1])

    def _decode_wh(self, index: int, j: int, augs: list[ImageAug] | None) -> tuple[int, int]:
        """The (W, H) camera ``j`` of sample ``index`` is read at: the ``img_scale`` size, or with the
        image augmentation the size its resize decodes to (the warp takes it from there)."""
        raw_wh = self._raw_wh(index, j)
        return target_size(*raw_wh, self.img_scale) if augs is None else decode_wh(raw_wh, augs[j].resize)

    def _image(self, index: int, j: int, wh: tuple[int, int], reads: dict | None) -> np.ndarray:
        """Camera ``j`` of sample ``index`` decoded at ``wh``: from the item's threaded reads when given."""
        if reads is not None:
            return reads[(index, j)].result()
        return self._read(self.data_root / str(self.table.cam_paths[index, j]), wh)

    def _prefetch(self, order: list[int], augs: list[ImageAug] | None) -> dict | None:
        """Every image of the item's frames, started on the decode threads (None: no threads, a cache)."""
        if not self.decoder.active or self.cache is not None:
            return None
        jobs = {}
        for i in dict.fromkeys(i for i in order if i >= 0):  # each real frame once, in order
            for j in range(len(self.cameras)):
                wh = self._decode_wh(i, j, augs)  # as _images / _images_aug read it
                jobs[(i, j)] = (self.data_root / str(self.table.cam_paths[i, j]), wh)
        return self.decoder.submit_all(self._read, jobs)

    def _images(
        self,
        index: int,
        rng: np.random.Generator | None,
        out: torch.Tensor,
        photo: torch.Tensor | None,
        reads: dict | None = None,
    ) -> torch.Tensor:
        """Write normalised images into ``out [N, 3, Hp, Wp]`` (zeros = padding); -> lidar2img [N, 4, 4].

        With ``images_on_device``: ``out`` is uint8 and gets the resized RGB images as they are, and
        ``photo [N, 6]`` each image's photometric draw (applied later, on the device)."""
        tab = self.table
        cached = self.cache[str(tab.tokens[index])] if self.cache is not None else None  # [N, H, W, 3]
        for j, cam in enumerate(self.cameras):
            raw_w, raw_h = self._raw_wh(index, j)
            w, h = self._decode_wh(index, j, None)
            if (h, w) != self.img_hw:
                raise ValueError(
                    f"sample {tab.tokens[index]} {cam}: {raw_w}x{raw_h} differs from the first "
                    "camera of the split; bevforge batches one resolution (resize images or fix infos)"
                )
            img = cached[j] if cached is not None else self._image(index, j, (w, h), reads)
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # [3, H, W] uint8
            self._put_image(out[j, :, :h, :w], t, rng, photo, j)  # a view into the padded frame
        h, w = self.img_hw
        scale = torch.eye(4, dtype=torch.float64).repeat(len(self.cameras), 1, 1)  # [N, 4, 4]
        scale[:, 0, 0] = torch.from_numpy(w / tab.cam_wh[index, :, 0])  # sx per camera
        scale[:, 1, 1] = torch.from_numpy(h / tab.cam_wh[index, :, 1])  # sy per camera
        return (scale @ torch.from_numpy(tab.lidar2img[index])).float()  # [N, 4, 4]

    def _images_aug(
        self,
        index: int,
        augs: list[ImageAug],
        rng: np.random.Generator | None,
        out: torch.Tensor,
        photo: torch.Tensor | None,
        reads: dict | None = None,
    ) -> torch.Tensor:
        """:meth:`_images` through the image augmentation: one warp per camera to ``input_hw`` (rounded to
        uint8 with ``images_on_device``, as PIL's warp in the official BEVDet pipeline)."""
        assert self.image_aug is not None
        tab = self.table
        hw = self.img_hw
        cached = self.cache[str(tab.tokens[index])] if self.cache is not None else None  # [N, H, W, 3]
        lidar2img = np.empty((len(self.cameras), 4, 4))  # [N, 4, 4]
        for j, aug in enumerate(augs):
            raw_wh, wh = self._raw_wh(index, j), self._decode_wh(index, j, augs)
            src = cached[j] if cached is not None else self._image(index, j, wh, reads)  # [Hs, Ws, 3] uint8
            out_from_raw = image_aug_matrix(aug, hw)  # [3, 3]
            out_from_src = out_from_raw @ np.linalg.inv(source_scale((src.shape[1], src.shape[0]), raw_wh))
            t = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1)  # [3, Hs, Ws] uint8
            img = warp_image(t, out_from_src, hw)  # [3, fH, fW] float32 in [0, 255]
            lidar2img[j] = lift_affine(out_from_raw) @ tab.lidar2img[index, j]
            self._put_image(out[j, :, : hw[0], : hw[1]], img, rng, photo, j)  # a view into the padded frame
        return torch.from_numpy(lidar2img).float()  # [N, 4, 4]

    def _put_image(
        self,
        dst: torch.Tensor,
        img: torch.Tensor,
        rng: np.random.Generator | None,
        photo: torch.Tensor | None,
        j: int,
    ) -> None:
        """``img [3, H, W]`` RGB in [0, 255] (uint8, or float from a warp) into ``dst [3, H, W]``.

        With ``images_on_device`` (``photo [N, 6]`` given): as uint8 (a float image rounded, as PIL's warp
        in the official BEVDet pipeline), and camera ``j``'s photometric draw into ``photo[j]``, applied
        later on the device. Otherwise finished here: distorted (training), RGB -> BGR for caffe-style
        configs, ``(x - mean) / std``."""
        augment = rng is not None and self.photometric_aug
        if photo is not None:
            dst.copy_(img if img.dtype == torch.uint8 else img.round_().clamp_(0, 255))
            if augment:
                photo[j] = torch.from_numpy(draw_photometric(rng))
            return
        if augment:
            img = photometric_distortion(img.float(), rng)
        dst.copy_(img.flip(0) if not self.to_rgb else img)  # RGB -> BGR (official caffe-style configs)
        dst.sub_(self._mean_chw).div_(self._std_chw)

    def _read(self, path: Path, wh: tuple[int, int]) -> np.ndarray:
        try:
            return read_image(path, wh)
        except MissingImageError:
            raise
        except ImageDecodeError as e:
            if not self.train:
                raise
            # Policy (docs/INFOS.md): in training a corrupt image becomes black, counted, reported once.
            self._corrupt.append(str(path))
            if str(path) not in self._reported:
                self._reported.add(str(path))
                warnings.warn(f"{e} (training continues with a black image; reported once)", stacklevel=2)
            return np.zeros((wh[1], wh[0], 3), dtype=np.uint8)

    def _frame(
        self,
        index: int,
        rng: np.random.Generator | None,
        out: torch.Tensor,
        augs: list[ImageAug] | None,
        photo: torch.Tensor | None,
        reads: dict | None = None,
    ) -> dict[str, Any]:
        tab = self.table
        if augs is None:
            lidar2img = self._images(index, rng, out, photo, reads)
        else:
            lidar2img = self._images_aug(index, augs, rng, out, photo, reads)
        return {
            "lidar2img": lidar2img,  # [N, 4, 4]
            "can_bus": torch.from_numpy(tab.can_bus[index]).float(),
            "ego2global": torch.from_numpy(tab.ego2global[index].copy()),
            "lidar2ego": torch.from_numpy(tab.lidar2ego[index].copy()),
            "frame_valid": True,
            "scene_token": str(tab.scene_tokens[index]),
            "timestamp": int(tab.timestamps[index]),
        }

    @staticmethod
    def _padding_frame(like: dict[str, Any]) -> dict[str, Any]:
        """A frame before the data start: zero images, geometry of ``like``, no scene (model resets)."""
        return {**like, "frame_valid": False, "scene_token": ""}

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item())) if self.train else None
        order = self.queue_indices(index, rng) if rng is not None else [index]
        for _ in range(50 if self.filter_empty_gt else 0):
            # official filter_empty_gt: a queue with a real frame without GT is replaced by a random index
            if all(len(select_gt(*self.table.gt(i), self.pcr)[1]) > 0 for i in order if i >= 0):
                break
            index = int(rng.integers(len(self)))
            order = self.queue_indices(index, rng)
        hp, wp = padded_size(*self.img_hw, self.pad_divisor)
        h, w = self.img_hw
        dtype = torch.uint8 if self.images_on_device else torch.float32
        images = torch.empty(len(order), len(self.cameras), 3, hp, wp, dtype=dtype)  # [T, N, 3, H, W]
        images[:, :, :, h:].zero_()  # bottom/right padding (cheaper than zeroing all of it)
        images[:, :, :, :h, w:].zero_()
        photo = None  # [T, N, 6] photometric draws (identity = none) for the device
        if self.images_on_device:
            photo = torch.tensor(PHOTOMETRIC_IDENTITY).expand(len(order), len(self.cameras), -1).clone()
        augs = None
        if self.image_aug is not None:  # one draw per camera, shared by all frames (BEVDet4D 'sequential')
            augs = [
                sample_image_aug(tuple(int(v) for v in self.table.cam_wh[index, j]), self.image_aug, rng)
                for j in range(len(self.cameras))
            ]
        reads = self._prefetch(order, augs)  # data.decode_threads: every image started at once
        frames = [
            self._frame(i, rng, images[t], augs, photo[t] if photo is not None else None, reads)
            if i >= 0
            else None
            for t, i in enumerate(order)
        ]
        for t, i in enumerate(order):
            if i < 0:
                images[t].zero_()  # padding frame
        first_real = next(f for f in frames if f is not None)
        frames = [f if f is not None else self._padding_frame(first_real) for f in frames]
        tab = self.table
        gt_boxes, gt_labels, gt_valid = tab.gt(index)
        seg = None
        if self.seg is not None:
            l2g = tab.ego2global[index] @ tab.lidar2ego[index]
            seg = torch.from_numpy(self.seg(str(tab.locations[index]), l2g))  # [S, bev_h, bev_w]
        lidar2img = torch.stack([f["lidar2img"] for f in frames])  # [T, N, 4, 4]
        lidar2ego = torch.stack([f["lidar2ego"] for f in frames])  # [T, 4, 4]
        depth_gt = None
        if self.depth_stride > 0:  # before the BDA: the projection is the same with or without it
            s = self.depth_stride
            points = torch.from_numpy(load_lidar_points(self.data_root / str(self.lidar_paths[index])))
            depth_gt = depth_map(points, lidar2img[-1], self.img_hw, (hp // s, wp // s), s)  # [N, fH, fW]
        if self.bda is not None and rng is not None:  # one BEV augmentation for every frame of the item
            bda = sample_bda(self.bda, rng)
            gt_boxes = bda_boxes(gt_boxes, bda)  # range filter below sees the augmented boxes (official)
            lidar2img, lidar2ego = bda_calibration(lidar2img, bda), bda_calibration(lidar2ego, bda)
            seg = bda_seg(seg, bda, self.pcr) if seg is not None else None
        boxes, labels = select_gt(gt_boxes, gt_labels, gt_valid, self.pcr)
        return {
            "images": images,  # [T, N, 3, H, W]
            "lidar2img": lidar2img,  # [T, N, 4, 4]
            "can_bus": torch.stack([f["can_bus"] for f in frames]),  # [T, 18]
            "ego2global": torch.stack([f["ego2global"] for f in frames]),  # [T, 4, 4]
            "lidar2ego": lidar2ego,  # [T, 4, 4]
            "frame_valid": torch.tensor([f["frame_valid"] for f in frames]),  # [T]
            "scene_tokens": [f["scene_token"] for f in frames],
            "sample_token": str(tab.tokens[index]),
            "timestamps": torch.tensor([f["timestamp"] for f in frames], dtype=torch.int64),  # [T]
            "img_hw": self.img_hw,
            "gt_boxes": boxes,  # [M, 9]
            "gt_labels": labels,  # [M]
            "seg_target": seg,
            "depth_gt": depth_gt,  # [N, fH, fW] metres (0 = no lidar point) or None
            "photometric": photo,  # [T, N, 6] (images_on_device) or None
        }
