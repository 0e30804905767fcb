"""Gymnasium environments of searchprune (the AMC-style layer-pruning environment lives here)."""
