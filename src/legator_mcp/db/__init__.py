"""The data layer: one database (SQLite or PostgreSQL), SQLAlchemy 2 async sessions and Alembic migrations."""
