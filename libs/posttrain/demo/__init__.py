"""The end-to-end demo: a support assistant for the (fictional) Acme Router X2.

dataset.py makes its training data; the demo driver runs the whole pipeline on it.
"""
