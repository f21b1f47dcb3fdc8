"""Text to phoneme chunks: normalize, split at sentences and clauses, phonemize, pack."""
