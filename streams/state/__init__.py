"""Tables and the rules evaluated from them: preferences, quiet hours, frequency caps,
digests, scheduling and deferral, batches, expiry, fan-out, the user-service fallback."""
