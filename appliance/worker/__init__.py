"""The worker: claims queued runs and exports and supervises their child processes (children.py)."""
