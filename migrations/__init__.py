"""Alembic migrations of the ra results store (applied automatically on open)."""
