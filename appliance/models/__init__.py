"""Base models: inspection (no torch), conversion (child process), registry."""
