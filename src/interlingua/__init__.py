"""interlingua: one shared continuous representation that conditions several different frozen LLMs.

    from interlingua import Interlingua
    il = Interlingua.from_pretrained("runs/native/bridge/step_000000")
    message = il.encode(["Context: …"], sender="smollm2-135m-instruct")
    answers = il.generate(message, receiver="gemma3-270m", question=["…?"])
"""

__version__ = "0.1.0"
__all__ = ["Interlingua", "Message", "InterlinguaError"]


def __getattr__(name: str):
    # Lazy, so `interlingua --help` and the config tools start without importing torch.
    if name in ("Interlingua", "Message"):
        from interlingua.models import system

        return getattr(system, name)
    if name == "InterlinguaError":
        from interlingua.errors import InterlinguaError

        return InterlinguaError
    raise AttributeError(f"module 'interlingua' has no attribute {name!r}")
