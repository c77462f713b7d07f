"""The failover drill: PostgreSQL primary and standby, Redis master, replica and Sentinels, the system under load."""
