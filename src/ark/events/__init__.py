"""ARK's events delivered as signed webhooks (Standard Webhooks): ``signing``, the ``outbox`` in the
database, the ``bus`` that fills it, the ``delivery`` that empties it with retries, the ``watch``ers that
turn ARK's state into events, and the ``component`` ``ark up`` starts (docs/automation.md)."""
