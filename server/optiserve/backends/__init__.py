"""Model backends: what actually produces text (local Hugging Face models, remote providers)."""
