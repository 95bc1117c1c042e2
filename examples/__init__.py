"""Runnable example apps: ``redisflow run examples.app:flow``."""
