"""Analysis of recorded runs and of number formats: gradients, scaler policies, advice, comparisons.

The server imports these: none imports torch or Lightning at import time.
"""
