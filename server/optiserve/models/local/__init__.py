"""Local Hugging Face causal LMs served with continuous batching.

``backend`` (the Backend), ``scheduler`` (the continuous-batching loop on its own thread),
``batch`` (the ``CausalLMBatch`` contract), ``kv_slots`` (the slot KV cache), ``sampling``,
``text`` (incremental detokenization and stop strings), ``events`` (what a consumer of the
scheduler sees), ``metrics`` (Prometheus instruments). Token bookkeeping is done by
:mod:`optiserve.batching` (Cython, with a pure-Python twin).
"""
