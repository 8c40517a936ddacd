"""CenterPoint head (BEVDet's ``CenterHead`` + ``SeparateHead``): class-grouped heatmaps and dense box
regression on the BEV grid.

Shape letters: B batch, C channels, H/W = bev_h/bev_w (the head runs at the BEV resolution), K_t classes
of task t, K = len(data.classes), N boxes.

A shared 3x3 conv (+BN+ReLU) feeds one branch set per task (class group). Each branch is
``conv(final_kernel)+BN+ReLU -> conv(final_kernel)``. ``forward`` returns a FLAT dict, for every task
``t`` in ``0..T-1``:

- ``t{t}.heatmap`` ``[B, K_t, H, W]`` class logits, channel j = class ``tasks[t][j]`` of ``data.classes``
- ``t{t}.reg``     ``[B, 2, H, W]`` sub-cell offset (x, y) of the centre from the cell's low corner, cells
- ``t{t}.height``  ``[B, 1, H, W]`` gravity-centre z, metres, lidar frame
- ``t{t}.dim``     ``[B, 3, H, W]`` log (l, w, h), metres
- ``t{t}.rot``     ``[B, 2, H, W]`` (sin yaw, cos yaw), yaw as in ``structures/boxes.py``
- ``t{t}.vel``     ``[B, 2, H, W]`` (vx, vy), m/s in the lidar frame

Grid (docs/CONTRACTS.md): row = y (row 0 at y_min), col = x (col 0 at x_min), cell size
``(x_max - x_min) / W`` by ``(y_max - y_min) / H``; a centre at (x, y) metres lies in cell
``col = floor((x - x_min) / cell_x)``, ``row = floor((y - y_min) / cell_y)``, offset = the fractional part.
``decode`` (models/centerpoint_decode.py) turns the outputs into boxes in our convention.
"""

from __future__ import annotations

from torch import Tensor, nn

from bevforge.config import Config, ConfigError
from bevforge.models.centerpoint_decode import NMSSettings, decode_centerpoint

#: regression branches (name, channels) in the official ``common_heads`` order; the box code of the loss
#: concatenates them in this order: (reg x, reg y, z, log l, log w, log h, sin, cos, vx, vy)
REG_HEADS: tuple[tuple[str, int], ...] = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))
TASK_SEPARATOR = "+"


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SeparateHead(nn.Module):
    """One task's branches: ``heatmap`` (``num_classes`` logits) and the regression heads of REG_HEADS."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        head_channels: int,
        final_kernel: int,
        init_bias: float,
        heatmap_init_std: float = 0.0,
    ) -> None:
        super().__init__()
        outs = (("heatmap", num_classes), *REG_HEADS)
        self.branches = nn.ModuleDict(
            {
                name: nn.Sequential(
                    _conv_bn_relu(in_channels, head_channels, final_kernel),
                    nn.Conv2d(head_channels, c_out, final_kernel, padding=final_kernel // 2),
                )
                for name, c_out in outs
            }
        )
        self.init_bias = init_bias
        self.heatmap_init_std = heatmap_init_std

    def reset_parameters(self) -> None:
        """Official init: Kaiming (fan_out, relu) convs with zero bias; heatmap bias ``init_bias``.

        ``heatmap_init_std > 0`` draws the heatmap's last conv from ``N(0, std)`` instead, so every cell
        starts near ``sigmoid(init_bias)`` (the official Kaiming weights give logits of std ~5-8, a
        focal loss in the 10^4 and saturated cells without gradient for the first tens of steps)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.branches["heatmap"][-1]
        if self.heatmap_init_std > 0:
            nn.init.normal_(last.weight, std=self.heatmap_init_std)
        nn.init.constant_(last.bias, self.init_bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: branch(x) for name, branch in self.branches.items()}  # each [B, c_out, H, W]


class CenterPointHead(nn.Module):
    """CenterPoint head over a BEV feature map; see the module docstring for the output keys.

    ``tasks``: per task, class indices into ``data.classes`` (official BEVDet: 6 groups);
    ``heatmap_init_std``: 0 = official init, see :meth:`SeparateHead.reset_parameters`. The decode
    settings (``score_threshold``, NMS per task, Scale-NMS factors per class) are kept for :meth:`decode`.
    """

    def __init__(
        self,
        in_channels: int,
        tasks: tuple[tuple[int, ...], ...],
        bev_h: int,
        bev_w: int,
        pc_range: tuple[float, ...],
        share_channels: int = 64,
        head_channels: int = 64,
        final_kernel: int = 3,
        init_bias: float = -2.19,
        heatmap_init_std: float = 0.0,
        score_threshold: float = 0.1,
        max_per_task: int = 500,
        pre_max_size: int = 1000,
        post_max_size: int = 83,
        nms_type: tuple[str, ...] | None = None,
        nms_thr: tuple[float, ...] | None = None,
        circle_radius: tuple[float, ...] | None = None,
        nms_rescale_factor: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if not tasks or any(len(t) == 0 for t in tasks):
            raise ValueError(f"tasks must be non-empty groups of class indices, got {tasks}")
        if len(pc_range) != 6:
            raise ValueError(f"pc_range needs 6 numbers (min xyz, max xyz), got {pc_range}")
        self.tasks = tuple(tuple(int(c) for c in t) for t in tasks)
        self.bev_h, self.bev_w = bev_h, bev_w
        self.pc_range = tuple(float(v) for v in pc_range)
        num_tasks = len(self.tasks)
        num_classes = max(max(t) for t in self.tasks) + 1
        self.nms = NMSSettings(
            score_threshold=score_threshold,
            max_per_task=max_per_task,
            pre_max_size=pre_max_size,
            post_max_size=post_max_size,
            nms_type=tuple(nms_type) if nms_type is not None else ("circle",) * num_tasks,
            nms_thr=tuple(nms_thr) if nms_thr is not None else (0.2,) * num_tasks,
            circle_radius=tuple(circle_radius) if circle_radius is not None else (1.0,) * num_tasks,
            nms_rescale_factor=(
                tuple(nms_rescale_factor) if nms_rescale_factor is not None else (1.0,) * num_classes
            ),
        )
        self.nms.check(num_tasks, num_classes)
        self.shared_conv = _conv_bn_relu(in_channels, share_channels, 3)
        self.task_heads = nn.ModuleList(
            SeparateHead(share_channels, len(t), head_channels, final_kernel, init_bias, heatmap_init_std)
            for t in self.tasks
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.shared_conv[0].weight, mode="fan_out", nonlinearity="relu")
        for head in self.task_heads:
            head.reset_parameters()

    def forward(self, bev_feat: Tensor) -> dict[str, Tensor]:
        """``bev_feat [B, C, bev_h, bev_w]`` -> flat dict ``t{i}.<name>`` (module docstring)."""
        assert bev_feat.dim() == 4, f"bev_feat must be [B, C, H, W], got {tuple(bev_feat.shape)}"
        x = self.shared_conv(bev_feat)  # [B, share, H, W]
        out: dict[str, Tensor] = {}
        for t, head in enumerate(self.task_heads):
            for name, value in head(x).items():
                out[f"t{t}.{name}"] = value  # [B, c_out, H, W]
        return out

    def decode(
        self,
        preds: dict[str, Tensor],
        max_boxes: int = 300,
        post_center_range: tuple[float, ...] | None = None,
        score_threshold: float = 0.0,
    ) -> list[dict[str, Tensor]]:
        """Boxes per batch element (``boxes [N, 9]`` ours, ``scores [N]``, ``labels [N]`` int64, by score).

        The effective score floor is ``max(score_threshold, head score_threshold)``."""
        return decode_centerpoint(
            preds,
            tasks=self.tasks,
            pc_range=self.pc_range,
            nms=self.nms,
            max_boxes=max_boxes,
            post_center_range=post_center_range,
            score_threshold=score_threshold,
        )


def resolve_tasks(task_names: tuple[str, ...], classes: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """``("car", "truck+construction_vehicle", ...)`` -> class indices per task, with clear errors."""
    tasks: list[tuple[int, ...]] = []
    seen: dict[str, int] = {}
    for t, group in enumerate(task_names):
        names = [n.strip() for n in group.split(TASK_SEPARATOR) if n.strip()]
        if not names:
            raise ConfigError(f"model.bevdet.head_tasks[{t}] is empty; give class names joined with '+'")
        idx = []
        for name in names:
            if name not in classes:
                raise ConfigError(
                    f"model.bevdet.head_tasks[{t}]={group!r}: {name!r} is not in data.classes {classes}"
                )
            if name in seen:
                raise ConfigError(
                    f"model.bevdet.head_tasks: class {name!r} is in task {seen[name]} and task {t}; "
                    "give each class one task"
                )
            seen[name] = t
            idx.append(classes.index(name))
        tasks.append(tuple(idx))
    return tuple(tasks)


def build_centerpoint_head(cfg: Config, in_channels: int | None = None) -> CenterPointHead:
    """The head from ``cfg.model.bevdet`` (head fields), ``cfg.data.classes`` / ``point_cloud_range`` and
    ``cfg.model.bev_h/bev_w``; ``in_channels`` defaults to ``model.bevdet.head_in_channels``."""
    b, d = cfg.model.bevdet, cfg.data
    if len(d.point_cloud_range) != 6:
        raise ConfigError(f"data.point_cloud_range needs 6 values, got {d.point_cloud_range}")
    tasks = resolve_tasks(tuple(b.head_tasks), tuple(d.classes))
    num_tasks = len(tasks)
    for key in ("nms_type", "nms_thr", "circle_radius"):
        if len(getattr(b, key)) != num_tasks:
            raise ConfigError(
                f"model.bevdet.{key} has {len(getattr(b, key))} values but head_tasks has {num_tasks} "
                "tasks: give one value per task"
            )
    if len(b.nms_rescale_factor) != len(d.classes):
        raise ConfigError(
            f"model.bevdet.nms_rescale_factor has {len(b.nms_rescale_factor)} values but data.classes has "
            f"{len(d.classes)}: give one factor per class (data.classes order)"
        )
    bad = [t for t in b.nms_type if t not in ("circle", "rotate")]
    if bad:
        raise ConfigError(f"model.bevdet.nms_type: {bad} unknown; use 'circle' or 'rotate' per task")
    return CenterPointHead(
        in_channels=b.head_in_channels if in_channels is None else in_channels,
        tasks=tasks,
        bev_h=cfg.model.bev_h,
        bev_w=cfg.model.bev_w,
        pc_range=tuple(d.point_cloud_range),
        share_channels=b.head_share_channels,
        head_channels=b.head_channels,
        final_kernel=b.head_final_kernel,
        init_bias=b.head_init_bias,
        heatmap_init_std=b.head_heatmap_init_std,
        score_threshold=b.score_threshold,
        max_per_task=b.max_per_task,
        pre_max_size=b.pre_max_size,
        post_max_size=b.post_max_size,
        nms_type=tuple(b.nms_type),
        nms_thr=tuple(b.nms_thr),
        circle_radius=tuple(b.circle_radius),
        nms_rescale_factor=tuple(b.nms_rescale_factor),
    )
