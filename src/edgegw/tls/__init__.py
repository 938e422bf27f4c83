"""Certificates and TLS contexts: secrets, SDS files and the drop-in directory, and the
SSL contexts of both directions."""
