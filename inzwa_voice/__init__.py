"""Inzwa Voice: a telephony voice gateway for a Shona-language helpline."""

__version__ = "0.1.0"
