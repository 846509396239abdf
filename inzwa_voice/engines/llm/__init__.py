"""Language model engines: embedded llama.cpp and any OpenAI-compatible server."""
