"""Training a query network against the frozen gallery: the gallery's side of a step, the one builder
for candidate and supernet training, batch-norm calibration of inherited subnets.
"""
