"""The conversation: safe replies, and (for calls) turn-taking, barge-in and memory."""
