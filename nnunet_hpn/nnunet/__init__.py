"""nnU-Net integration: the start-up hook, planners, normalization, plans tools, splits and trainers (and the
trainer shim folder ``ext/`` that ``nnUNet_extTrainer`` points to). Importing this package imports nothing heavy."""
