"""opendepot: a self-hostable server for the Depot API."""

__version__ = "0.1.0"
