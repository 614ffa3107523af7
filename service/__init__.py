"""Model-serving web service."""
