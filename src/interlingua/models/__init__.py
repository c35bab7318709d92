"""Model loading (registry), the frozen-LM wrapper, the sentence encoder and the trained modules."""
