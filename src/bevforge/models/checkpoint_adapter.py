"""Official BEVFormer checkpoints (mmdet3d plugin names) -> bevforge state dicts.

Key mapping (``module.`` stripped first; N = layer index):

| official | ours |
|---|---|
| ``img_backbone.*`` (mmdet ResNet, DCN ``conv2.conv_offset``) | ``backbone.*`` (same names) |
| ``img_neck.{lateral,fpn}_convs.i.conv.*`` | ``neck.{lateral,fpn}_convs.i.*`` |
| ``pts_bbox_head.bev_embedding.weight`` | ``encoder.bev_embedding.weight`` |
| ``pts_bbox_head.positional_encoding.{row,col}_embed.weight`` | ``encoder.positional_encoding.*`` |
| ``pts_bbox_head.transformer.{level_embeds,cams_embeds}`` | ``encoder.*`` (level rows sliced to ours) |
| ``pts_bbox_head.transformer.can_bus_mlp.{0,2,norm}.*`` | ``encoder.can_bus_mlp.{0,2,4}.*`` |
| ``pts_bbox_head.transformer.reference_points.*`` | ``det_head.reference_points.*`` |
| ``...transformer.encoder.layers.N.attentions.0.*`` (TSA) | ``encoder.layers.N.temporal_attn.*`` |
| ``...transformer.encoder.layers.N.attentions.1.*`` (SCA) | ``encoder.layers.N.spatial_attn.*`` |
| ``...transformer.decoder.layers.N.attentions.0.attn.*`` (MHA) | ``det_head.layers.N.self_attn.*`` |
| ``...transformer.decoder.layers.N.attentions.1.*`` | ``det_head.layers.N.cross_attn.*`` |
| ``....layers.N.ffns.0.layers.0.0.*`` / ``.ffns.0.layers.1.*`` | ``....layers.N.ffn.layers.0.*`` / ``.3.*`` |
| ``....layers.N.norms.i.*`` | ``....layers.N.norms.i.*`` |
| ``pts_bbox_head.query_embedding.weight`` | ``det_head.query_embedding.weight`` |
| ``pts_bbox_head.{cls,reg}_branches.N.*`` | ``det_head.{cls,reg}_branches.N.*`` |

``pts_bbox_head.code_weights`` (a frozen parameter of the official head) is dropped.

Box code: the official head regresses ``(cx, cy, log w, log l, cz, log h, sin rot, cos rot, vx, vy)`` in
the old mmdet3d convention (``rot = -yaw - pi/2``, sizes w, l). With ``convert_box_code`` the last
linear layer of every reg branch is re-ordered and re-signed so it outputs our code
``(cx, cy, log l, log w, cz, log h, sin yaw, cos yaw, vx, vy)``: ``sin yaw = -cos rot``,
``cos yaw = -sin rot``. Centre rows (0, 1, 4), used for the reference refinement, are unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Our code row i comes from official row _CODE_PERM[i], times _CODE_SIGN[i].
_CODE_PERM = (0, 1, 3, 2, 4, 5, 7, 6, 8, 9)
_CODE_SIGN = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0)
_DROPPED = ("pts_bbox_head.code_weights",)

_T = r"pts_bbox_head\.transformer\."
_RULES: list[tuple[str, str]] = [
    (r"img_backbone\.(.+)", r"backbone.\1"),
    (r"img_neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(.+)", r"neck.\1.\2.\3"),
    (r"pts_bbox_head\.bev_embedding\.(.+)", r"encoder.bev_embedding.\1"),
    (
        r"pts_bbox_head\.positional_encoding\.(row_embed|col_embed)\.(.+)",
        r"encoder.positional_encoding.\1.\2",
    ),
    (_T + r"(level_embeds|cams_embeds)", r"encoder.\1"),
    (_T + r"can_bus_mlp\.norm\.(.+)", r"encoder.can_bus_mlp.4.\1"),
    (_T + r"can_bus_mlp\.([02])\.(.+)", r"encoder.can_bus_mlp.\1.\2"),
    (_T + r"reference_points\.(.+)", r"det_head.reference_points.\1"),
    (_T + r"encoder\.layers\.(\d+)\.attentions\.0\.(.+)", r"encoder.layers.\1.temporal_attn.\2"),
    (_T + r"encoder\.layers\.(\d+)\.attentions\.1\.(.+)", r"encoder.layers.\1.spatial_attn.\2"),
    (_T + r"decoder\.layers\.(\d+)\.attentions\.0\.attn\.(.+)", r"det_head.layers.\1.self_attn.\2"),
    (_T + r"decoder\.layers\.(\d+)\.attentions\.1\.(.+)", r"det_head.layers.\1.cross_attn.\2"),
    (_T + r"encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(.+)", r"encoder.layers.\1.ffn.layers.0.\2"),
    (_T + r"encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(.+)", r"encoder.layers.\1.ffn.layers.3.\2"),
    (_T + r"encoder\.layers\.(\d+)\.norms\.(\d+)\.(.+)", r"encoder.layers.\1.norms.\2.\3"),
    (_T + r"decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(.+)", r"det_head.layers.\1.ffn.layers.0.\2"),
    (_T + r"decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(.+)", r"det_head.layers.\1.ffn.layers.3.\2"),
    (_T + r"decoder\.layers\.(\d+)\.norms\.(\d+)\.(.+)", r"det_head.layers.\1.norms.\2.\3"),
    (r"pts_bbox_head\.query_embedding\.(.+)", r"det_head.query_embedding.\1"),
    (r"pts_bbox_head\.(cls_branches|reg_branches)\.(.+)", r"det_head.\1.\2"),
]
_COMPILED = [(re.compile(p + "$"), r) for p, r in _RULES]


@dataclass
class AdapterReport:
    """What happened to every key: mapped and loaded, or why not."""

    loaded: list[str] = field(default_factory=list)  # our keys filled from the checkpoint
    unmatched: list[str] = field(default_factory=list)  # official keys with no rule or no target in ours
    missing: list[str] = field(default_factory=list)  # our keys the checkpoint did not provide
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # known official keys with no counterpart

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.missing or self.shape_mismatch)

    def summary(self) -> str:
        lines = [
            f"loaded {len(self.loaded)}, unmatched {len(self.unmatched)}, missing {len(self.missing)}, "
            f"shape mismatch {len(self.shape_mismatch)}, dropped {len(self.dropped)}"
        ]
        for name, keys in (("unmatched", self.unmatched), ("missing", self.missing)):
            if keys:
                lines.append(f"  {name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        for key, a, b in self.shape_mismatch[:8]:
            lines.append(f"  shape mismatch {key}: checkpoint {a} vs model {b}")
        return "\n".join(lines)


def is_official_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True for a state dict with the official BEVFormer names (``pts_bbox_head.*``/``img_backbone.*``)."""
    return any(k.removeprefix("module.").startswith(("pts_bbox_head.", "img_backbone.")) for k in state)


def map_official_key(key: str) -> str | None:
    """Our name for one official key, or None when no rule applies."""
    key = key.removeprefix("module.")
    for pattern, repl in _COMPILED:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _is_last_reg_linear(our_key: str, keys: set[str]) -> bool:
    m = re.match(r"det_head\.reg_branches\.(\d+)\.(\d+)\.(weight|bias)$", our_key)
    if not m:
        return False
    branch, idx = m.group(1), int(m.group(2))
    return not any(
        re.match(rf"det_head\.reg_branches\.{branch}\.(\d+)\.", k) and int(k.split(".")[3]) > idx
        for k in keys
    )


def convert_box_code_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of the official last reg layer (weight ``[10, C]`` or bias ``[10]``) -> our box-code order."""
    sign = torch.tensor(_CODE_SIGN, dtype=t.dtype, device=t.device)
    out = t[list(_CODE_PERM)]
    return out * (sign[:, None] if t.dim() == 2 else sign)


def convert_official_state_dict(
    official: dict[str, torch.Tensor], convert_box_code: bool = True
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Official state dict -> (ours, unmatched official keys, dropped official keys)."""
    ours: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    dropped: list[str] = []
    for key, value in official.items():
        if key.removeprefix("module.") in _DROPPED:
            dropped.append(key)
            continue
        new = map_official_key(key)
        if new is None:
            unmatched.append(key)
        else:
            ours[new] = value
    if convert_box_code:
        keys = set(ours)
        for k in keys:
            if _is_last_reg_linear(k, keys):
                ours[k] = convert_box_code_rows(ours[k])
    return ours, unmatched, dropped


def load_official_checkpoint(
    model: nn.Module, checkpoint: str | Path | dict[str, torch.Tensor], convert_box_code: bool = True
) -> AdapterReport:
    """Load an official BEVFormer checkpoint (path or state dict) into ``model`` (non-strict) and report.

    ``level_embeds`` with more rows than ours (official always keeps 4) are cut to our levels. Nothing
    is loaded into a parameter whose shape differs; such keys are listed in ``shape_mismatch``.
    """
    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        from bevforge.models.backbone import load_state_dict_file

        state = load_state_dict_file(checkpoint)
    mapped, unmatched, dropped = convert_official_state_dict(state, convert_box_code)
    target = model.state_dict()
    report = AdapterReport(unmatched=list(unmatched), dropped=dropped)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        if key not in target:
            report.unmatched.append(key)
            continue
        if key.endswith("level_embeds") and value.dim() == 2 and value.shape[0] > target[key].shape[0]:
            value = value[: target[key].shape[0]]
        if tuple(value.shape) != tuple(target[key].shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(target[key].shape)))
            continue
        to_load[key] = value
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in target if k not in to_load and not k.endswith("num_batches_tracked"))
    return report


def convert_checkpoint_file(
    model: nn.Module,
    src: str | Path,
    dst: str | Path,
    convert_box_code: bool = True,
    allow_partial: bool = False,
) -> AdapterReport:
    """Official checkpoint ``src`` -> bevforge checkpoint ``dst`` (``{"model": state_dict}``, the format
    ``--load-from`` and ``bevforge test`` read), through ``model`` (built from the matching recipe).

    Raises ``ValueError`` with the report when keys are unmatched/missing/mis-shaped, unless
    ``allow_partial``; the file is written atomically.
    """
    import io as _io

    from bevforge.io import atomic_write_bytes

    report = load_official_checkpoint(model, src, convert_box_code)
    if not report.ok and not allow_partial:
        raise ValueError(
            f"{src} does not fit the model (wrong recipe? set model.official_compat, bev_h/bev_w, layers to "
            f"the official config):\n{report.summary()}"
        )
    buf = _io.BytesIO()
    torch.save({"model": model.state_dict()}, buf)
    atomic_write_bytes(dst, buf.getvalue())
    return report
