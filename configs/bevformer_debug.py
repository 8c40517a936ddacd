"""BEVFormer-debug: the tiny architecture at toy sizes, trains in minutes on a CPU on the synthetic set.

ResNet-18 C4 (stride 16), embed 64, BEV 50 x 50, 1 encoder + 2 decoder layers, 300 queries, queue 2,
no GridMask. Trained from scratch (no weights are downloaded), so BatchNorm trains (``norm_eval``
off); 300 queries because a synthetic sample holds ~60 boxes in range (real nuScenes ~35 with 900).
Data: ``bevforge prepare`` on ``data/synthetic`` (400 x 225 images, scaled x0.5).
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
    m.backbone.depth = 18
    m.backbone.pretrained = ""
    m.backbone.frozen_stages = 0
    m.backbone.norm_eval = False
    m.backbone.out_indices = (2,)  # C4: 13 x 7 cells per camera at 200 x 112 instead of 7 x 4
    m.neck.out_channels = m.embed_dims = 64
    m.ffn_dims = 128
    m.bev_h = m.bev_w = 50
    m.encoder_layers = 1
    m.tsa_heads = m.sca_heads = m.decoder_heads = 4
    m.decoder_layers = 2
    m.num_queries = 300
    m.use_grid_mask = False
    t.epochs = 4
    t.lr = 1e-3
    t.warmup_iters = 20
    t.log_interval = 5
    return cfg
