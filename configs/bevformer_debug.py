"""BEVFormer-debug: the tiny architecture at toy sizes, trains in minutes on a CPU on the synthetic set.

ResNet-18 C3 + C4 (strides 8, 16) into a 2-level FPN, embed 64, BEV 50 x 50 over +-25.6 m (1 m cells),
1 encoder + 2 decoder layers, 300 queries, queue 2, no GridMask. Trained from scratch (no weights are
downloaded), so BatchNorm trains (``norm_eval`` off); 300 queries because a synthetic sample holds ~60
boxes in range (real nuScenes ~35 with 900). Data: ``bevforge prepare`` on ``data/synthetic``
(400 x 225 images, scaled x0.5).

Measured on synthetic data (``bevforge synth --scenes 30 --version v1.0-trainval``: 24 train / 6 val
scenes, 4 epochs = 1920 iterations, ~1 h on 2 shared CPU cores): val mAP 0.0225, NDS 0.109
(``docs/LEARNING.md``). ``--set model.aux_heatmap=true`` adds a training-only CenterPoint heatmap head on
the BEV (not official): mAP 0.039, NDS 0.121 in the same run.
"""

from bevforge.config import Config, load_config


def config() -> Config:
    cfg = load_config("bevformer_tiny")
    cfg.name = "bevformer_debug"
    d, m, t = cfg.data, cfg.model, cfg.train
    d.data_root, d.info_dir, d.version = "data/synthetic", "data/synthetic/infos", "v1.0-mini"
    d.img_scale = 0.5  # 400 x 225 -> 200 x 113, padded to 224 x 128
    d.queue_length = 2
    d.num_workers = 2
    d.images_on_device = False  # the CPU recipe: the batched finishing costs more than the workers' CPU path
    m.backbone.depth = 18
    m.backbone.pretrained = ""
    m.backbone.frozen_stages = 0
    m.backbone.norm_eval = False
    m.backbone.out_indices = (1, 2)  # C3 + C4: 25 x 14 and 13 x 7 cells per camera at 200 x 112
    m.neck.num_outs = 2
    m.neck.out_channels = m.embed_dims = 64
    m.ffn_dims = 128
    m.bev_h = m.bev_w = 50
    m.encoder_layers = 1
    m.tsa_heads = m.sca_heads = m.decoder_heads = 4
    m.decoder_layers = 2
    m.num_queries = 300
    m.use_grid_mask = False
    d.point_cloud_range = (-25.6, -25.6, -5.0, 25.6, 25.6, 3.0)  # 1 m BEV cells at 50 x 50
    cfg.eval.post_center_range = (-35.0, -35.0, -10.0, 35.0, 35.0, 10.0)
    t.channels_last = False  # the CPU recipe: its overfit and golden-loss tests follow the NCHW trajectory
    t.epochs = 4
    t.lr = 1e-3
    t.warmup_iters = 20
    t.log_interval = 5
    return cfg
