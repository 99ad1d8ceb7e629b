"""Names that carry a layer through the graphs attmemo writes (defined once, read everywhere)."""


def fed_input(layer: int) -> str:
    """The fed model's input carrying ``layer``'s stored attention (unfuse.fed_model)."""
    return f"attmemo.stored_probs.{layer}"


def fed_probs(layer: int) -> str:
    """The dense float32 P a fed model's ``layer`` multiplies by V, when decoded from its input (unfuse.fed_model)."""
    return f"{layer_prefix(layer)}fed_probs"


def layer_prefix(layer: int) -> str:
    """Prefix of the values and nodes a rewrite copies out of ``layer``'s MemoAttention call."""
    return f"attmemo.L{layer}."


def probs_value(layer: int) -> str:
    """``layer``'s attention probabilities: a recording model's output, the oracle model's input."""
    return f"attmemo.probs.{layer}"


def hidden_value(layer: int) -> str:
    """``layer``'s input hidden states, a recording model's output."""
    return f"attmemo.hidden.{layer}"


# The aligned fed model's gather indexes, shared by every served layer (aligned_feed.aligned_fed_model).
ALIGNED_ROWS = "attmemo.aligned.rows"         # int64[n]: the stored row each query token reads
ALIGNED_COLUMNS = "attmemo.aligned.columns"   # int64[m]: each stored token's query position, n where lost
