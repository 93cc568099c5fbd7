"""Pieces every service shares: settings, logging, auth, the envelope, topology and registry."""
