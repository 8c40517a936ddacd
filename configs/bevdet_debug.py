"""BEVDet-debug: the BEVDet-R50 architecture at toy sizes; trains in minutes on a CPU on the synthetic set.

ResNet-18 C3+C4 (random init, BN trains) -> FPN 64 ch at stride 8 (28 x 16 feature cells per camera) ->
LSS (depth 1..59 m, 32 context channels) -> BEV 64 x 64 over +-25.6 m (0.8 m cells, the official cell
size) -> BEV ResNet 64/128/256 + FPN-LSS 64 ch -> CenterPoint head (official 6 task groups, 32-channel
branches, official Kaiming init). BEVDepth-style depth
supervision from the synthetic LIDAR_TOP (``model.bevdet.depth_loss_weight = 3``, not in the official
BEVDet). No image/BEV augmentation (a few hundred iterations learn faster without). Data: ``bevforge
prepare`` on ``data/synthetic`` (400 x 225 images, scaled x0.5 -> 200 x 113, padded to 224 x 128).
Measured (24 train / 6 val synthetic scenes, 1200 it): val mAP 0.0211, NDS 0.181 (0.0002 / 0.062
without the depth term); runs and commands in ``docs/LEARNING.md``.
"""

from bevforge.config import Config, load_config


def config() -> Config:
    cfg = load_config("bevdet_r50")
    cfg.name = "bevdet_debug"
    d, m, t = cfg.data, cfg.model, cfg.train
    d.data_root, d.info_dir, d.version = "data/synthetic", "data/synthetic/infos", "v1.0-mini"
    d.input_size = ()  # the img_scale + pad path
    d.img_scale = 0.5
    d.img_aug = d.bev_aug = False
    d.batch_size, d.num_workers = 2, 2
    m.backbone.depth = 18
    m.backbone.pretrained = ""
    m.backbone.with_cp = False
    m.backbone.out_indices = (1, 2)  # C3 + C4: the FPN's first level is stride 8
    m.neck.out_channels = 64
    m.bev_h = m.bev_w = 64
    d.point_cloud_range = (-25.6, -25.6, -5.0, 25.6, 25.6, 3.0)  # 0.8 m BEV cells at 64 x 64
    cfg.eval.post_center_range = (-35.0, -35.0, -10.0, 35.0, 35.0, 10.0)
    b = m.bevdet
    b.feat_downsample = 8
    b.depth_loss_weight = 3.0  # official BEVDepth loss_depth_weight
    b.context_channels = 32
    b.bev_backbone_channels = (64, 128, 256)
    b.head_in_channels = 64
    b.head_share_channels = b.head_channels = 32
    t.epochs = 5  # demo set: 400 it; the 24-scene set: 1200 it, ~28 min on 2 busy cores (docs/LEARNING.md)
    t.lr = 2e-3
    t.warmup_iters = 20
    t.min_lr_ratio = 1e-3  # cosine decay: short runs end better annealed
    t.base_batch_size = 2
    t.log_interval = 5
    return cfg
