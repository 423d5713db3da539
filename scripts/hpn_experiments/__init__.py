"""What the experiment scripts in ``scripts/`` share: the environment and runs of nnU-Net's stock commands, the CPU
Table 1's dataset and training preset, the fold archive of resumable runs, the ablation's rows and tables, known
misalignments and inputs with a phase left out.

A helper package of the scripts, not of ``nnunet_hpn``: a script run as ``python scripts/X.py`` finds it beside
itself, the tests through pytest's ``pythonpath``.
"""
