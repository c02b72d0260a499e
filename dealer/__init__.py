"""The dealer service: a third party that serves Beaver triples and holds no inputs."""
