"""The demo that ``make demo`` runs: dev certificates, two private backends and the gateway."""
