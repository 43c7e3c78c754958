"""Automation: n8n run by `ark up` (``install``, ``component``), reacting to ARK's events (ark.events)."""
