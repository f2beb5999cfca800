"""The index database: schema, migrations, the four ops classes and search."""
