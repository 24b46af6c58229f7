"""Hand-offs: provision a device and put its archive on a stick, verified and logged."""
