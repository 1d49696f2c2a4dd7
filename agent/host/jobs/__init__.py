"""The jobs: one module per msixlab command, each putting options, a lab, a scenario, the
verdict and the results together (docs/architecture.md)."""
