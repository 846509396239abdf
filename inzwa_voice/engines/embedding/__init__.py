"""Sentence embedding engines: a caller's English words as a vector, for matching by meaning."""
