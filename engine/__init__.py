"""aircall-segment: Aircall webhooks to Segment messages through declarative YAML mappings."""

__version__ = "0.1.0"
LIBRARY_NAME = "aircall-segment"
