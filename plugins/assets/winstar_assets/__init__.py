"""Winstar Edge plugin: the asset entity type."""
