"""`ra gates`: gate and reciprocity analysis (pure), aggregation over runs, tables, plots."""
