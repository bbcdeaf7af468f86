"""The bottom layer: settings, the topic catalog, Kafka client configuration, provisioning,
the status lifecycle, ids, lanes, health, tracing, sealing and rate limits.

streams/, connectors/ and api_shim/ import from here; this package imports none of them
(tests/unit/test_layout.py checks it).
"""
