"""Placeholder: being built (issue 3)."""
