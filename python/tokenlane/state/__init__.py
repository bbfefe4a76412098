"""Shared state of the request-path stages, behind one interface per stage, with a backend per URL:
the response cache (:mod:`tokenlane.state.cache`), and the reservations, rate buckets, concurrency
slots and leases replicas share (:mod:`tokenlane.state.redis`, with :mod:`tokenlane.state.shared`
for the failure modes)."""
