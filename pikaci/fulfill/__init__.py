"""Prepared-output fulfillment (the reference's §3.5): the helper that exposes a realized store
path at the paths a request names, and the launcher that runs it from a launch request. Both
are standard library only: they are copied to builders that do not have pikaci installed."""
