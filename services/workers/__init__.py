"""Workers: consume rx.events, turn events into commands keyed by the triggering event, record."""
