"""The Quantize verb: admission of one job at a time, checks, the job off the event loop,
and registering the measured variant as a servable model (:class:`Quantizer`)."""

from optiserve.quantizing.quantizer import Quantizer

__all__ = ["Quantizer"]
