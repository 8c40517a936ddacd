"""BEVDet-debug: the BEVDet-R50 architecture at toy sizes; trains in minutes on a CPU on the synthetic set.

ResNet-18 C4+C5 (random init, BN trains) -> FPN 64 ch at stride 16 -> LSS (depth 1..59 m, 32 context
channels) -> BEV 64 x 64 over +-51.2 m (1.6 m cells) -> BEV ResNet 64/128/256 + FPN-LSS 64 ch ->
CenterPoint head (official 6 task groups, 32-channel branches). No image/BEV augmentation (a few hundred
iterations learn faster without). Data: ``bevforge prepare`` on ``data/synthetic`` (400 x 225 images,
scaled x0.5 -> 200 x 113, padded to 224 x 128 = 14 x 8 feature cells).
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
    m.neck.out_channels = 64
    m.bev_h = m.bev_w = 64
    b = m.bevdet
    b.context_channels = 32
    b.bev_backbone_channels = (64, 128, 256)
    b.head_in_channels = 64
    b.head_share_channels = b.head_channels = 32
    t.epochs = 5  # 400 iterations on the 160 training samples of the demo set (~25 min on 2 busy cores)
    t.lr = 2e-3
    t.warmup_iters = 20
    t.min_lr_ratio = 1e-3  # cosine decay: short runs end better annealed
    t.base_batch_size = 2
    t.log_interval = 5
    return cfg
