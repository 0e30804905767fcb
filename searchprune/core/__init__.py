"""Abstractions shared by every layer above: layers, dependency groups, masks, budgets."""
