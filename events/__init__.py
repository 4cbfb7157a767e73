"""rxtrail."""
