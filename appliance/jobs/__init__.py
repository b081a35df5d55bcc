"""Job queue on SQLite: runs created, claimed atomically, heartbeated, reclaimed, finished."""
