"""What produces text: the :class:`~optiserve.models.base.Backend` protocol, the catalogue of
served models, and the backends (``local/``: Hugging Face models with continuous batching;
remote providers join here).

Imports ``accounting`` and ``domain`` only.
"""
