"""Alembic environment: the URL comes from aftercare's Settings (or the caller), never from an ini."""

from alembic import context
from sqlmodel import SQLModel

import aftercare.models  # noqa: F401  (registers the tables)
from aftercare.db import make_engine
from aftercare.settings import Settings

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    url = config.attributes.get("database_url") or Settings().database_url
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
