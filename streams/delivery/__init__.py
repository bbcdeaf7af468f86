"""Sending: providers and their order, circuit breakers, fallback, the retry tiers."""
