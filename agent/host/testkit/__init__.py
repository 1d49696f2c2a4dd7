"""The test kit: msixlab's pytest plugin and the shared lab behind its fixtures
(docs/writing-tests.md)."""
