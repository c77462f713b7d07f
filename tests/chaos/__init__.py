"""Fault injection on the real components: a PostgreSQL cluster, redis-server and `wjp` processes of the run's own."""
