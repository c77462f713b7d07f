"""Delivery on Dramatiq and Redis: the broker, the delivery actor, channels, backoff and the reconciler."""
