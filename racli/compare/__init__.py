"""`ra compare`: verdict statistics (pure), grouping of the recorded runs, and text."""
