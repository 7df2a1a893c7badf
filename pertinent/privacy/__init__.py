"""Privacy and governance: PII redaction (and, as they land, retention, consent, audit)."""
