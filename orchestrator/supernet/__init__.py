"""`cmpnas supernet train`: the weight-sharing supernet trained once as a one-trial Tune job, tracked
in MLflow.
"""
