"""The domain: request and response types, errors and request validation.

The bottom layer: it imports nothing else of optiserve. Every layer above speaks these
dataclasses; only ``rpc/convert.py`` turns them into protobuf messages and back.
"""
