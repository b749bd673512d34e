"""Winstar Edge plugin: entity groups and the PE [Edge] NAME All rule."""
