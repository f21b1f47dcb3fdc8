"""Incremental audio encoders: float32 PCM chunks in, bytes of one growing file out."""
