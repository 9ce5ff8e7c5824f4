"""Objaverse / Cap3D metadata access and the high-quality filter criteria (no Ray)."""
