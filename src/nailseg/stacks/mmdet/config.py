"""The MMDetection Mask R-CNN config, generated from the typed experiment config.

The config is built as plain dicts from validated fields; nothing from the user is ever
executed. It is written into the run folder as ``mmdet_config.py`` (to read, or to use with
MMDetection's own tools) and ``mmdet_config.json`` (what nailseg loads back).
"""

from __future__ import annotations

from pathlib import Path

from nailseg.core.weights import IMAGENET, Normalization
from nailseg.core.runtime import encoder_lr_scale, resolve_precision, resolve_workers
from nailseg.config import Experiment

DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
# Loaded by MMDetection's own tools too (``mmdet_config.py``), which then find the timm backbone and
# the augmentation steps (SeededAlbu, BoxesFromMasks).
AUGMENTATION_STEPS = "nailseg.stacks.mmdet.templates.augmentation"
CUSTOM_IMPORTS = dict(imports=["nailseg.stacks.mmdet.backbone", AUGMENTATION_STEPS], allow_failed_imports=False)


def backbone_config(encoder: str, weights: str = "none", freeze_bn: bool = False) -> tuple[dict, list[int]]:
    """Mask R-CNN's backbone and the FPN's input channels: MMDetection's ResNet (``resnet18``...,
    random: ``init_cfg=None``, nothing is downloaded) or a timm encoder (``tu-...``) with ``weights``
    (``none`` | ``imagenet`` | a file). Neither freezes a stage; BatchNorm statistics stay fixed
    (``norm_eval``) only with ``optim.freeze_encoder_bn``."""
    if encoder in DEPTHS:
        depth = DEPTHS[encoder]
        return (dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                     norm_cfg=dict(type="BN", requires_grad=True), norm_eval=freeze_bn, style="pytorch",
                     init_cfg=None),
                [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048])
    from nailseg.stacks.mmdet.backbone import feature_channels

    return dict(type="NailsegTimmBackbone", encoder=encoder, weights=weights, norm_eval=freeze_bn), feature_channels(encoder)


def instance_classes(exp: Experiment) -> tuple[tuple[str, ...], list[tuple[int, int, int]]]:
    """The categories Mask R-CNN predicts and their colours: ``nail``, or every class of
    ``data.classes`` but the first, the background (``core.data.coco.categories``)."""
    labels = exp.data.label_spec
    if labels is None:
        return ("nail",), [(220, 20, 60)]
    from nailseg.core.labels import palette

    return labels.names[1:], [tuple(int(v) for v in c) for c in palette(labels.n)[1:]]


def model_config(encoder: str, max_instances: int = 30, freeze_bn: bool = False, norm: Normalization = IMAGENET,
                 weights: str = "none", num_classes: int = 1, rois_per_image: int = 512,
                 mask_threshold: float = 0.5) -> dict:
    """MMDetection's Mask R-CNN; ``norm``: the encoder's input normalisation (``Experiment.normalization``);
    ``num_classes``: its categories, the background not counted (MMDetection's convention);
    ``mask_threshold``: the mask head's probability at which a pixel is in an instance."""
    backbone, in_channels = backbone_config(encoder, weights, freeze_bn)
    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[m * 255 for m in norm.mean],
                               std=[s * 255 for s in norm.std], bgr_to_rgb=True, pad_mask=True,
                               pad_size_divisor=32),
        backbone=backbone,
        neck=dict(type="FPN", in_channels=in_channels, out_channels=256, num_outs=5),
        rpn_head=dict(
            type="RPNHead", in_channels=256, feat_channels=256,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
                                    out_channels=256, featmap_strides=[4, 8, 16, 32]),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=num_classes,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0),
                                    out_channels=256, featmap_strides=[4, 8, 16, 32]),
            mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256,
                           num_classes=num_classes,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                    match_low_quality=True, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=rois_per_image, pos_fraction=0.25, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=max_instances,
                      mask_thr_binary=mask_threshold)),
    )


def _optimizer(exp: Experiment) -> dict:
    """``optim.name`` as mmengine's wrappers of the torch optimizers, with the same arguments as Lightning."""
    o = exp.optim
    if o.name == "sgd":
        return dict(type="SGD", lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
    return dict(type="AdamW" if o.name == "adamw" else "Adam", lr=o.lr, weight_decay=o.weight_decay)


def param_schedulers(exp: Experiment, iters_per_epoch: int, epochs: int | None = None) -> list[dict]:
    """The shared schedule (``core.runtime.lr_factor``) with mmengine's own schedulers, per iteration:
    a linear warm-up over ``optim.warmup_epochs``, then cosine (to 1%), poly or constant, over
    ``epochs`` (default ``trainer.max_epochs``; fewer where a time budget planned them).

    Mask R-CNN from scratch diverged to NaN within a few iterations without any warm-up, so with
    ``warmup_epochs: 0`` a short warm-up (a fifth of the run, at most 100 iterations) is kept.
    The decay's ``end`` is one past the last iteration: mmengine steps a scheduler at global step
    ``i + 1`` after iteration ``i``, so the last iteration's step reaches the bottom only there.
    """
    o = exp.optim
    max_iters = max(1, (epochs or exp.trainer.max_epochs) * iters_per_epoch)
    if o.warmup_epochs:
        warmup, start = min(max_iters, o.warmup_epochs * iters_per_epoch), 1.0 / (o.warmup_epochs + 1)
    else:
        warmup, start = min(100, max(1, max_iters // 5)), 0.001
    schedulers = [dict(type="LinearLR", start_factor=start, by_epoch=False, begin=0, end=warmup)]
    rest = max_iters - warmup
    if rest <= 0 or o.scheduler == "none":
        schedulers.append(dict(type="ConstantLR", factor=1.0, by_epoch=False, begin=warmup, end=max_iters + 1))
    elif o.scheduler == "cosine":
        # to 1% of each group's own rate (the encoder's is scaled by optim.encoder_lr_scale)
        schedulers.append(dict(type="CosineAnnealingLR", T_max=rest, eta_min_ratio=0.01, by_epoch=False,
                               begin=warmup, end=max_iters + 1))
    else:
        schedulers.append(dict(type="PolyLR", power=o.poly_power, eta_min=0.0, by_epoch=False,
                               begin=warmup, end=max_iters + 1))
    return schedulers


def albu_transform(op) -> dict:
    """One op as MMDetection's ``Albu`` builds it: albumentations' own serialisation of the transform
    ``core.augment`` makes for the Lightning path (``type`` + its arguments). Albu hands it the BGR
    picture MMDetection loads; the colour ops' ranges are symmetric, so swapping red and blue draws
    the same shifts."""
    import albumentations as A
    import cv2

    from nailseg.core.augment import albumentations_op

    spec = A.to_dict(albumentations_op(A, cv2, op))["transform"]
    return {"type": spec.pop("__class_fullname__"), **spec}


# One MMDetection step per op it translates: the flips are MMDetection's own RandomFlip, every other
# op an albumentations transform that runs in MMDetection's ``Albu``, so the stacks augment alike. Its
# keys are the mmdet row's ``ops`` in nailseg.specs (tests/test_specs.py).
MMDET_FLIPS = {"hflip": "horizontal", "vflip": "vertical"}  # RandomFlip's directions


def _flip(op) -> dict:
    return dict(type="RandomFlip", prob=op.p, direction=MMDET_FLIPS[op.name])


MMDET_OPS = {
    **{name: _flip for name in MMDET_FLIPS},
    **{name: albu_transform for name in ("affine", "brightness_contrast", "hue_saturation", "gauss_noise", "blur")},
}


def train_augmentation(ops: list) -> list[dict]:
    """The spec's ops in order: each flip a ``RandomFlip``, each run of the other ops one ``SeededAlbu``
    (MMDetection's ``Albu``, seeded) over the picture, and over its instance masks too when one of them
    moves pixels, followed then by ``BoxesFromMasks``: boxes tight around the moved masks, instances
    that left dropped (both in ``templates/augmentation.py``)."""
    from nailseg.core.augment import GEOMETRIC

    steps: list[dict] = []
    run: list = []

    def close_run() -> None:
        if run:
            moves = any(op.name in GEOMETRIC for op in run)  # then the masks go through Albu too
            steps.append(dict(type="SeededAlbu", transforms=[MMDET_OPS[op.name](op) for op in run],
                              keymap={"img": "image", "gt_masks": "masks"} if moves else {"img": "image"}))
            if moves:
                steps.append(dict(type="BoxesFromMasks"))
            run.clear()

    for op in ops:
        if op.name in MMDET_FLIPS:
            close_run()
            steps.append(MMDET_OPS[op.name](op))
        else:
            run.append(op)
    close_run()
    return steps


def build_mmdet_config(exp: Experiment, *, work_dir: Path, images_dir: Path, ann_files: dict[str, Path],
                       iters_per_epoch: int, on_gpu: bool, launcher: str, epochs: int | None = None) -> dict:
    """The whole mmdet config; ``epochs``: the loop's length (default ``trainer.max_epochs``; a
    resumed run under ``trainer.max_time`` passes the epochs its budget planned)."""
    h, w = exp.data.size_hw
    scale = (max(h, w), min(h, w))
    train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                      dict(type="Resize", scale=scale, keep_ratio=True)]
    train_pipeline += train_augmentation(exp.augment.train)  # the config refused any op not in the mmdet row
    train_pipeline.append(dict(type="PackDetInputs"))
    meta = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")
    # The test pipeline needs the Resize, or the mask head fails on a missing scale_factor.
    test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=scale, keep_ratio=True),
                     dict(type="PackDetInputs", meta_keys=meta)]
    val_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=scale, keep_ratio=True),
                    dict(type="LoadAnnotations", with_bbox=True, with_mask=True), dict(type="PackDetInputs", meta_keys=meta)]

    classes, colours = instance_classes(exp)

    def dataset(split: str, pipeline: list, test_mode: bool) -> dict:
        return dict(type="CocoDataset", metainfo=dict(classes=classes, palette=colours),
                    data_root=str(images_dir), ann_file=str(ann_files[split]), data_prefix=dict(img=""),
                    filter_cfg=dict(filter_empty_gt=not test_mode, min_size=0), pipeline=pipeline, test_mode=test_mode)

    t, o = exp.trainer, exp.optim
    workers = resolve_workers(exp.data.num_workers)
    max_iters = max(1, (epochs or t.max_epochs) * iters_per_epoch)
    evaluator = lambda split: dict(type="CocoMetric", ann_file=str(ann_files[split]), metric=["bbox", "segm"],  # noqa: E731
                                   format_only=False, backend_args=None)
    load_from = None if exp.model.load_from in ("", "none") else exp.model.load_from
    # the shared precision rule (MMDetection's AmpOptimWrapper: mixed precision on a GPU only)
    precision_amp = on_gpu and resolve_precision(t.precision, "gpu").amp
    return dict(
        default_scope="mmdet",
        custom_imports=CUSTOM_IMPORTS,
        model=model_config(exp.model.encoder, exp.model.max_instances, exp.optim.freeze_encoder_bn,
                           exp.normalization, exp.model.encoder_weights, num_classes=len(classes),
                           rois_per_image=exp.model.rois_per_image, mask_threshold=exp.model.mask_threshold),
        train_dataloader=dict(batch_size=t.batch_size, num_workers=workers, persistent_workers=workers > 0,
                              # InfiniteSampler: DefaultSampler with an iteration loop sleeps 2 s at every epoch end
                              sampler=dict(type="InfiniteSampler", shuffle=True),
                              batch_sampler=dict(type="AspectRatioBatchSampler"),
                              dataset=dataset("train", train_pipeline, False)),
        val_dataloader=dict(batch_size=1, num_workers=workers, persistent_workers=workers > 0, drop_last=False,
                            sampler=dict(type="DefaultSampler", shuffle=False), dataset=dataset("val", val_pipeline, True)),
        test_dataloader=dict(batch_size=1, num_workers=workers, persistent_workers=workers > 0, drop_last=False,
                             sampler=dict(type="DefaultSampler", shuffle=False), dataset=dataset("test", test_pipeline, True)),
        val_evaluator=evaluator("val"),
        test_evaluator=evaluator("test"),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=iters_per_epoch),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        # From scratch, lr 0.01 without warm-up diverged to NaN within a few iterations: warm up and clip.
        optim_wrapper=dict(type="AmpOptimWrapper" if precision_amp else "OptimWrapper",
                           optimizer=_optimizer(exp),
                           paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=encoder_lr_scale(
                               o.encoder_lr_scale, exp.model.default_encoder_lr_scale))}),
                           clip_grad=dict(max_norm=t.gradient_clip_val or 10.0, norm_type=2)),
        param_scheduler=param_schedulers(exp, iters_per_epoch, epochs),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, min(50, iters_per_epoch))),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", interval=iters_per_epoch, by_epoch=False, max_keep_ckpts=2,
                            save_best="coco/segm_mAP", rule="greater"),
            sampler_seed=dict(type="DistSamplerSeedHook"),
            visualization=dict(type="DetVisualizationHook"),
        ),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl" if on_gpu else "gloo")),
        vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
        visualizer=dict(type="DetLocalVisualizer", name="visualizer",
                        vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]),
        log_processor=dict(type="LogProcessor", window_size=max(1, min(50, iters_per_epoch)), by_epoch=False),
        log_level="INFO",
        load_from=load_from,
        resume=False,
        launcher=launcher,
        work_dir=str(work_dir),
        randomness=dict(seed=t.seed),
    )
