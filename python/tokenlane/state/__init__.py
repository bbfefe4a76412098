"""Shared hot state of the request path (reservations, buckets, slots, leases): Redis for several
replicas (:mod:`tokenlane.state.redis`)."""
