"""The query side: a collection embedded by the gallery model into a FAISS index (`cmpnas gallery
embed`), and queries against it (`cmpnas query`).
"""
