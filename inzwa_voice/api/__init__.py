"""HTTP routes: seed REST, OpenAI-compatible, system and admin."""
