"""Routes, one module per screen (auth, user, config, admin, reports) plus the JSON/OpenAI API."""
