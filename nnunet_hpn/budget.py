"""The environment variables that set an HPN training's budget from outside (CPU ablation runs, the demo's
scripts): read by every HPN trainer (``nnunet_hpn.nnunet.trainers.hpn_trainer``), written by
``scripts/run_ablation.py``."""

#: Environment variable -> trainer attribute: the training length of every HPN trainer and how often
#: ``checkpoint_latest.pth`` is written (nnU-Net: every 50 epochs; a long CPU run stopped in between would lose up
#: to 49 epochs).
BUDGET_ENV: dict[str, str] = {"HPN_NUM_EPOCHS": "num_epochs", "HPN_ITERATIONS_PER_EPOCH": "num_iterations_per_epoch",
                              "HPN_VAL_ITERATIONS_PER_EPOCH": "num_val_iterations_per_epoch",
                              "HPN_SAVE_EVERY": "save_every"}
#: ``HPN_SEED=N``: Python's, NumPy's and torch's global generators seeded with N when the trainer is created (weight
#: initialisation and the main process's draws; nnU-Net's data-augmentation worker processes stay unseeded).
SEED_ENV = "HPN_SEED"
#: ``HPN_NO_TTA=1``: no test-time mirroring in the final validation (and in later predictions of the model).
NO_TTA_ENV = "HPN_NO_TTA"
