"""Winstar Edge plugin template: the ``alarm_rule`` entity type."""
