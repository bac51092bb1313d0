"""The shells that run the core: the fast shell, the daemon, their journal and run files."""
