"""The client side of the wire contract: service model, sessions, validation, errors."""
