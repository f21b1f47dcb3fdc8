"""`kokoro-pay envoy-config`: the Envoy gRPC front proxy's configuration, read off the services.

Read in order: `discovery.py` asks each service (or its compiled descriptors) what it serves,
`rendering.py` turns that into Envoy's bootstrap, `command.py` is the command line and the files
it writes.
"""
