"""The sender and the receiver as separate steps (``interlingua encode`` / ``generate``): prompt text -> wire
message bytes, and bytes -> answer. The message frame itself is ``interlingua.codec``."""
