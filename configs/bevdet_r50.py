"""BEVDet-R50 (official ``configs/bevdet/bevdet-r50.py``, dev2.x): ResNet-50 C4+C5 -> FPN (512 ch, stride 16)
-> LSS (depth 1..59 m in 1 m bins, 64 context channels) -> BEV 128 x 128 over +-51.2 m (0.8 m cells)
-> CustomResNet + FPN-LSS (256 ch) -> CenterPoint head (6 task groups). Official numbers (nuScenes val,
no CBGS, README of the official dev2.x repo): 28.3 mAP / 35.0 NDS.

Input 256 x 704 (resize 0.44 of 900 x 1600 + crop); train-time image aug resize (-0.06, 0.11), rotate
+-5.4 deg, flip; BEV aug (BDA) rotate +-22.5 deg, scale 0.95-1.05, x/y flips 0.5. AdamW lr 2e-4, wd 1e-7,
grad clip 5, linear warm-up 200 iters from 0.001, 24 epochs, 8 samples per GPU x 8 GPUs.

Differences from the official run: the official schedule is mmcv ``step=[24]`` (constant after the
warm-up for the 24 epochs); ours is the trainer's cosine with ``min_lr_ratio = 1``, i.e. the same constant
rate. No EMA (the official config keeps an EMA of the weights), weight decay skips norms/biases, and the
image backbone gets the same lr as the rest (``backbone_lr_mult = 1``, as official).
"""

from bevforge.config import Config


def config() -> Config:
    cfg = Config(name="bevdet_r50")
    d, m, t, e = cfg.data, cfg.model, cfg.train, cfg.eval
    d.data_root, d.info_dir, d.version = "data/nuscenes", "data/nuscenes/infos", "v1.0-trainval"
    d.point_cloud_range = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    d.input_size = (256, 704)  # resize + crop of the 900 x 1600 images, folded into lidar2img
    d.img_aug, d.resize_lim, d.rot_lim_deg, d.img_flip = True, (-0.06, 0.11), (-5.4, 5.4), True
    d.crop_h_lim, d.resize_test = (0.0, 0.0), 0.0
    d.bev_aug, d.bda_rot_lim_deg, d.bda_scale_lim, d.bda_flip_ratio = True, (-22.5, 22.5), (0.95, 1.05), 0.5
    d.pad_divisor = 32
    d.img_mean, d.img_std, d.to_rgb = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), True
    d.queue_length = 1  # single frame
    d.photometric_aug = False  # BEVDet has no photometric distortion
    d.batch_size, d.num_workers = 8, 4

    m.arch = "bevdet"
    m.backbone.depth = 50
    m.backbone.out_indices = (2, 3)  # C4 + C5
    m.backbone.frozen_stages = -1
    m.backbone.norm_eval = False
    m.backbone.pretrained = "torchvision"  # official torchvision://resnet50 (from the local torch cache)
    m.backbone.with_cp = True
    m.neck.out_channels, m.neck.num_outs = 512, 1  # official CustomFPN out_ids=[0]
    m.bev_h = m.bev_w = 128
    m.num_classes = 10
    m.with_det, m.with_seg = True, False
    b = m.bevdet
    b.depth_bins = (1.0, 60.0, 1.0)
    b.context_channels = 64  # numC_Trans
    b.feat_downsample = 16
    b.bev_backbone_layers = (2, 2, 2)
    b.bev_backbone_channels = (128, 256, 512)  # numC_Trans x [2, 4, 8]
    b.head_in_channels = 256  # FPN-LSS out

    t.epochs, t.lr, t.weight_decay, t.backbone_lr_mult, t.grad_clip = 24, 2e-4, 1e-7, 1.0, 5.0
    t.warmup_iters, t.warmup_ratio, t.min_lr_ratio = 200, 0.001, 1.0
    t.base_batch_size = 64  # 8 GPUs x 8 samples
    e.max_boxes = 500  # official max_num
    e.score_threshold = 0.0  # the head's own floor (model.bevdet.score_threshold = 0.1) applies
    e.post_center_range = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    return cfg
