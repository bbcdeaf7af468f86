"""Trigger rules: events on upstream topics that become notification requests."""
