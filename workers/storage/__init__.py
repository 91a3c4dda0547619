"""Files that must survive a crash or prove what they hold: durable writes, file digests, checkpoints
with a fingerprint.
"""
