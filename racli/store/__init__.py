"""The results store: ORM models, engine and migrations, the run recorder, every query.

Import the modules themselves (`racli.store.engine`, ...): this package file stays
empty so that reading one small module does not load SQLAlchemy.
"""
