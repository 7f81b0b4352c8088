"""Prepared-output fulfillment (the reference's §3.4-3.5): `helper.py`, which exposes a realized
store path at the paths a request names, and `launcher.py`, which runs the helper from a launch
request (both standard library only: they are copied to machines without pikaci);
`settings.py`, the consumer a run uses; `consumer.py`, a run's side of the protocol."""
