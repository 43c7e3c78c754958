"""Backups: ARK's database, config, secrets and data in one checked archive, and back (ark.backup.archive)."""
