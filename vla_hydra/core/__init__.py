"""Shared framework pieces, one home each: errors, logging, device, seeding, IO, config helpers."""
