//! Store tests against the memory store and a real PostgreSQL.
