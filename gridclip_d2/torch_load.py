"""Why PyTorch's safe loader (``torch.load(..., weights_only=True)``) refused a file, in one line
for an error that names the file: without PyTorch's advice to load it with ``weights_only=False`` or
to allowlist what it references, either of which could run the code a hostile pickle carries."""

import re

__all__ = ["load_error_text"]

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_error_text(e: BaseException) -> str:
    """What went wrong in a safe ``torch.load``, e.g. "its pickle references eval, which a file of
    tensors and plain data never needs: loading it could run code"."""
    text = str(e)
    found = _GLOBAL.search(text)
    if found:
        return (
            f"its pickle references {found.group(1)}, which a file of tensors and plain data "
            "never needs: loading it could run code"
        )
    if isinstance(e, EOFError):
        return "the file is empty or ends early"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if "weights_only" in first.lower() or "weights only" in first.lower():
        first = ""
    first = first.split(". ")[0]  # PyTorch's explanations follow the first sentence
    return f"{type(e).__name__}" + (f": {first}" if first else "")
