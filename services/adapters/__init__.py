"""Adapters: the event store, the event-log reader, API keys, statement rendering."""
