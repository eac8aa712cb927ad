"""ResNet50 stage 1 only: the ImageNet backbone stays frozen, only the new head trains."""

NEVER = 10_000  # a stage-2 start beyond any max_epochs: the backbone is never unfrozen

SPEC = {
    "model": "resnet50",
    "stage2_epoch": NEVER,
    "crop": "none",  # the whole scan, as this space was measured (results/brain_mri/resnet_stage1)
    "lr": {"loguniform": [1e-4, 1e-2]},
    "dropout": {"uniform": [0.0, 0.5]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
}
