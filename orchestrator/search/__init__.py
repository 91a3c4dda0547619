"""One search's life: its state and phases, the driver and the stages of a session, trials and final
training on Ray Tune, the parent run and the front in MLflow, `cmpnas sync`, `cmpnas space info`.
"""
