"""Transport legs: each turns one wire protocol into 16 kHz PCM frames for a call session."""
