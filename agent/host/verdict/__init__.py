"""The verdict: judgement without I/O, from the outcome classes and routing records to the
checks and the exit code (docs/verdict.md)."""
