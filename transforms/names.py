"""Names that carry a layer through the graphs attmemo writes (defined once, read everywhere)."""


def fed_input(layer: int) -> str:
    """The fed model's input carrying ``layer``'s stored attention (unfuse.fed_model)."""
    return f"attmemo.stored_probs.{layer}"


def layer_prefix(layer: int) -> str:
    """Prefix of the values and nodes a rewrite copies out of ``layer``'s MemoAttention call."""
    return f"attmemo.L{layer}."
