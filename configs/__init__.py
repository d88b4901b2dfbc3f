"""segflow.configs: example jobs and the demo models, shipped as package data."""
