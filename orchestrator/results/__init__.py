"""A search read back from MLflow: its Pareto front (rows, rendering), the best candidate per budget,
the final training of the front. No Ray, no trainable.
"""
