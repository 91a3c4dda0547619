"""MLflow: tag names, the client of a search, the crash-safe journal every search write goes through,
the Tune callbacks that turn trials into child runs, the splits as dataset inputs.
"""
