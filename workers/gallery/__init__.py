"""The frozen gallery model: its sources (`sources`), the model cmpnas trains and its training, the BCT
classifier, and its embeddings of the data.
"""
