"""The call simulator: real speech into any leg, with real-time pacing, and what comes back."""
