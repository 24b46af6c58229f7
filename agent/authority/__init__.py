"""The local provisioning authority: a server that speaks the AWS Panorama and Snow Device
Management wire protocols, issues real short-lived certificates from its own CA, and keeps
its state in SQLite.  It is the embedded default backend and the peer every test talks to.

Modules: ``ca`` (certificate authority), ``bundle`` (the configuration archive), ``store``
(SQLite), ``sigv4`` (request verification), ``lifecycle`` (states derived from time),
``faults`` (fault injection), ``service`` (operation handlers), ``server`` (HTTP and wire
encoding), ``embedded`` (in-process use), ``admin`` and ``claim`` (small clients).
"""
