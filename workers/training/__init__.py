"""The loop every model trains with (`fit`), its batches and augmentation, how images become model
input, and the compatibility losses.
"""
