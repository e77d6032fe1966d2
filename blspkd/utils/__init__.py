"""Small shared utilities (logging, configuration)."""
