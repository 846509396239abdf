"""Voice activity detection engines."""
