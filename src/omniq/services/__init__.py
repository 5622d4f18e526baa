"""Services that run beside a client while it is open: the janitor (lapsed leases, expiry,
purges, blob sweeps), the schedules (firing due slots as tasks) and health (one picture of the
queue). Each takes the client's ``Session`` (imported for type checking only) and callbacks; none
imports the client."""
