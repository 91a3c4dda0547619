"""What every job prepares before its work: the output folder, the data, the frozen gallery model and
its embeddings (once), the supernet of the inherit modes, Ray (local or joined) and its Tune
experiments.
"""
