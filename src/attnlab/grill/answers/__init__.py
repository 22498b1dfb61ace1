"""One module per answered grill question; each defines `QUESTION` (see registry)."""
