"""The teacher ablation: {teachers} x {with, without CQT} cells, the random-init floor and handcrafted baselines,
probed on the demo's real-material tasks (``ablation/dvc.yaml``; ``params.yaml`` section ``ablation``).

:mod:`~mert.ablation.params` (the section), :mod:`~mert.ablation.plan` (cells, objectives, paths),
:mod:`~mert.ablation.run` (the stages), :mod:`~mert.ablation.report` (tables, plot, MLflow runs).
"""
