"""The one place where transformers' versions differ for the remote-code set (tested range: 5.19 to 5.25).

Remote code runs under the *user's* transformers, so every name below resolves on each version of the range. Each
shim says which versions need it and what to delete when `pyproject.toml`'s floor moves past them.

It imports only torch, transformers and the standard library, and no sibling: `processing/compat_desta.py` is the
same file (a link), as `release_desta.py` is, so both halves of the remote-code set share it.
"""

import copy
import dataclasses
import functools
import inspect

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

# transformers >= 5.24 names the KV cache `cache` (argument and output field) and keeps `past_key_values` as a
# deprecated alias; 5.19-5.23 know only `past_key_values`. Delete with the floor at 5.24: use `cache` directly.
CACHE_NAME = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def accepts_cache_kwarg(forward):
    """Let `forward(cache=...)` take the KV cache under either name.

    On 5.24+ `past_key_values=` is the deprecated alias and warns, as transformers' own models do; on older versions
    `generate` itself passes `past_key_values=` at every step, so it is renamed silently there.
    """
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def renamed(*args, **kwargs):
        if "past_key_values" in kwargs:
            kwargs.setdefault("cache", kwargs.pop("past_key_values"))
        return forward(*args, **kwargs)

    # `generate` checks the kwargs it is given (a prefilled `past_key_values=` among them) against the signature.
    renamed.__signature__ = _with_keyword(inspect.signature(forward), "past_key_values")
    return renamed


def _with_keyword(signature: inspect.Signature, name: str) -> inspect.Signature:
    """`signature` with a keyword-only `name=None`, placed before any `**kwargs`."""
    parameters = list(signature.parameters.values())
    at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    parameters.insert(at, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None))
    return signature.replace(parameters=parameters)


def output_cache(outputs):
    """The KV cache of a model output, whatever the installed transformers calls it."""
    return getattr(outputs, CACHE_NAME, None)


def cache_field(cache) -> dict:
    """`{name: cache}` for building a model output or calling a transformers model."""
    return {CACHE_NAME: cache}


try:  # transformers >= 5.24; delete the fallback with the floor at 5.24.
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        """The last `logits_to_keep` positions (0 keeps all), or the positions a 1-D tensor names (5.19's rule)."""
        if isinstance(logits_to_keep, int):
            return hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states
        return hidden_states[:, logits_to_keep, :]


def pipeline_generate_kwargs(pipeline, generate_kwargs: dict) -> dict:
    """The `generate()` kwargs of one pipeline call: the call's, over the pipeline's generation config.

    transformers >= 5.24 has `Pipeline._prepare_generate_kwargs` (init-time parameters, task defaults); 5.19-5.23
    pipelines pass `generation_config=self.generation_config` unless the call gives one. Delete the fallback with the
    floor at 5.24.
    """
    if hasattr(pipeline, "_prepare_generate_kwargs"):
        return pipeline._prepare_generate_kwargs(generate_kwargs)
    if "generation_config" in generate_kwargs:
        return dict(generate_kwargs)
    # The call's parameters go into a copy of the config (generate deprecates a config beside parameters).
    config = copy.deepcopy(pipeline.generation_config)
    unused = config.update(**generate_kwargs)
    return {**unused, "generation_config": config}


__all__ = [
    "CACHE_NAME",
    "accepts_cache_kwarg",
    "cache_field",
    "output_cache",
    "pipeline_generate_kwargs",
    "slice_logits_to_keep",
]
