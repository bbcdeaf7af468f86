"""What the stages run on: the Faust app, decode/emit/dead-letter helpers, lane agents,
worker parts, metrics, the configuration views and the Faust fixes."""
