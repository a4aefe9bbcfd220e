"""Running the gateway: logs, Prometheus metrics, audit events, health endpoints and
the admin CLI."""
