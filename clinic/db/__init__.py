"""PostgreSQL: connections, the versioned schema, and the stores built on it."""
