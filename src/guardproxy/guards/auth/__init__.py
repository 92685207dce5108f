"""Edge authentication: JWT providers with JWKS, API keys, forward auth, and per-route IP lists."""
