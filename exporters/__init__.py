"""Collectors: one module per hardware area; each turns readings into metric families."""
