"""The local provisioning authority: a server that speaks the AWS Panorama and Snow Device
Management wire protocols, issues real short-lived certificates from its own CA, and keeps
its state in SQLite.  It is the embedded default backend and the peer every test talks to.

Modules: ``ca`` (certificate authority), ``bundle`` (the configuration archive), ``store``
(SQLite), ``sigv4`` (request verification), ``lifecycle`` (states derived from time),
``faults`` (fault injection) and ``fault_gate`` (applying it to a call), ``service`` (operation
handlers), ``server`` (HTTP plumbing) with ``wire`` (JSON bodies in and out), ``routes`` (the AWS
routes), ``request`` (what the HTTP layer hands on), ``aws_api`` and ``local_api`` (the AWS and
``/_local/`` answers), ``embedded`` (in-process use), ``admin`` and ``claim`` (small clients).
"""
