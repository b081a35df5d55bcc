"""SQLite data layer: engine, tables, migrations, small query functions."""
