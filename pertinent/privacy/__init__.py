"""Privacy and governance: PII redaction, the audit log and encryption at rest (retention,
consent and forgetting live in the client; docs/privacy.md has the whole picture)."""
