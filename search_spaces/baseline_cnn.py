"""The baseline CNN trained from scratch: learning rate, dropout, weight decay, width and depth."""

SPEC = {
    "model": "cnn",
    "crop": "none",  # the whole scan, as this space was measured (results/brain_mri/baseline_cnn)
    "lr": {"loguniform": [1e-4, 3e-3]},
    "dropout": {"uniform": [0.0, 0.5]},
    "weight_decay": {"loguniform": [1e-6, 1e-3]},
    "cnn_width": {"choice": [16, 32]},
    "cnn_depth": {"choice": [3, 4]},
}
