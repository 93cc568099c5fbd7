"""Developer tooling: private servers for make run, the tests and the benches; development tokens.

Not part of the image: nothing here runs in production.
"""
