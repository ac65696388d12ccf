"""`ra bench`: the timing harness, its inputs, the best-vs-best ranking, history and text."""
