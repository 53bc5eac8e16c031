"""Personalization with a finished run (DESIGN §10): serving a user by what is known about
them (serving), the most telling next question and simulated questioning sessions (sessions)."""
