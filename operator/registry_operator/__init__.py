"""registry-operator: one `Registry` resource becomes a private, TLS-encrypted, authenticated registry."""
