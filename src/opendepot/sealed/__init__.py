"""Secrets every node needs (signing keys, CA keys), kept in the store with their private parts sealed by a
key the operator gives every node, so that a node needs only the database URL and that key."""
