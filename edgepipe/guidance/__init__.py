"""Recognizer-guided pre-transforms: each picture changed, within a fidelity budget, so that the recognizer's
answer on its decoded version stays its answer on the original (guided.py)."""
