"""``resnet_stage2`` with stage 2 unfreezing by bottleneck block instead of by whole stage.

The same space (brain crop; learning rates, dropout, weight decay and the stage-2 start sampled), except that it
samples ``unfreeze_blocks``, the number of bottleneck blocks trained from the top of the backbone: 3 and 9 are
``resnet_stage2``'s unfreeze depths 1 and 2 (layer4; layer3-4), the others cut inside a stage (1, 2: part of
layer4; 5, 7: layer4 and the top of layer3). The feature cache holds one cut for each.
"""

SPEC = {
    "model": "resnet50",
    "crop": "brain",
    "lr": {"loguniform": [3e-4, 3e-3]},
    "backbone_lr": {"loguniform": [1e-5, 1e-3]},
    "dropout": {"uniform": [0.1, 0.5]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "unfreeze_blocks": {"choice": [1, 2, 3, 5, 7, 9]},
    "stage2_epoch": {"choice": [2, 3]},
}
