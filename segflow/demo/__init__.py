"""The offline demo: synthetic scenes with exact ground truth, and the training of the demo models.

Nothing on the labeling path imports this package; ``segflow demo`` and
``segflow train-demo-models`` do.
"""
