"""RPC handlers: map protobuf to domain calls and back. No SQL here, and no rules beyond shape."""
