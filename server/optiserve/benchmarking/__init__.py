"""The Benchmark verb: workloads expanded into points (:mod:`.runner`), measured with one
set of statistics (:mod:`.stats`) against the server's own pipeline (:mod:`.pipeline`,
:class:`.benchmarker.Benchmarker`) or, from ``optiserve bench --client-side``, against
StreamGenerate calls over the network."""
