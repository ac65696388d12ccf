"""`ra runs`: what a run holds (details.py), how it is shown (view.py) and exported
(export.py). The reads themselves are in racli.store.queries; no torch."""
