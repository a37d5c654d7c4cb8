"""Layer 1: the OpenAI-compatible gateway. It measures and forwards; nothing slow runs here."""
