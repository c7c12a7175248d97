"""Alembic environment: migrations run on a connection handed over by :mod:`legator_mcp.db.migrate`."""

from alembic import context

from legator_mcp._all_models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline SQL generation is not supported
    raise RuntimeError("run migrations through legator_mcp.db.migrate (legator db upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
