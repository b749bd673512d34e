"""Winstar Edge plugin: the dashboard entity type."""
