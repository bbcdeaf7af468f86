"""The six stages of the pipeline, one agent module each: request -> enrich -> render ->
route -> deliver -> status (docs/architecture.md)."""
