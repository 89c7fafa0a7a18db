"""The harness shared by the test suite and scripts/ (demo, bench, soak): real components on loopback.

`seaweed` (a SeaweedFS S3 server), `faultproxy` (faults in front of it), `otlp` (an OTLP/HTTP receiver),
`tlsfront` (a TLS front with a throwaway CA), `holders` (processes holding files open).

Why here: the tests are its first user, and the top level of the repository is fixed. The boundary is that
this package imports only the standard library and third-party packages, never `tests.conftest` or a test
module, nor anything from scripts/; tests and scripts import only its public names. Neither side reaches
into the other's private parts.
"""
