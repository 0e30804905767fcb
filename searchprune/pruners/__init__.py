"""Pruning criteria and baseline methods."""
