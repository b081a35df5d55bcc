"""The worker: claims queued runs and supervises their training child process."""
