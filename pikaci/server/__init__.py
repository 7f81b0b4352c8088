"""The run-bundle server: a token-protected JSON API over one or more state roots."""
