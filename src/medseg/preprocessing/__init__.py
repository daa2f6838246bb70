"""Preprocessing: dataset fingerprint, plan, normalisation, and the cached pipeline."""
