"""Winstar Edge plugin: the device entity type."""
