"""Terminal safety, tables, plots and number formats shared by every command (no torch)."""
