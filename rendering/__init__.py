"""Rendering library (no Ray): mesh I/O, procedural meshes, cameras, normalization, backends."""
